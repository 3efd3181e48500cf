"""saes's Hydra launchers. Hydra only loads plugin classes from the ``hydra_plugins`` namespace
package (shared with every other Hydra plugin, e.g. hydra-submitit-launcher), so the logic lives
here too: ``local_gpus`` (``launcher=local_gpus``, conf/launcher/local_gpus.yaml)."""

from hydra.core.config_store import ConfigStore

from hydra_plugins.saes_launchers.local_gpus import LocalGPULauncher, LocalGPULauncherConf, NoGPUError

ConfigStore.instance().store(group="hydra/launcher", name="local_gpus", node=LocalGPULauncherConf, provider="saes")

__all__ = ["LocalGPULauncher", "LocalGPULauncherConf", "NoGPUError"]
