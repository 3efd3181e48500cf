"""Registers saes's launchers with Hydra, which only loads plugin classes from the
``hydra_plugins`` namespace; the logic lives in ``launchers/``."""

from hydra.core.config_store import ConfigStore

from launchers.local_gpus import GPUQueueLauncher, LocalGPULauncherConf


class LocalGPULauncher(GPUQueueLauncher):
    """``launcher=local_gpus``: one job per visible GPU at a time (see ``launchers.local_gpus``)."""


ConfigStore.instance().store(group="hydra/launcher", name="local_gpus", node=LocalGPULauncherConf, provider="saes")
