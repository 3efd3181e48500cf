"""The activation cache: rows of one model pass, on disk, read back by any number of training runs.

Layout of a cache folder: ``plan.json`` (what is being written, from the first shard on),
``shards/<i>/`` (one folder per shard, each written atomically: ``<hook>.npy`` rows in the
storage dtype, ``tokens.npy`` token ids, ``where.npy`` (context, position) of every row,
``shard.json``) and ``manifest.json``, written last: a cache without it is incomplete and is never
read. Modules: ``manifest`` (the format and its checks), ``writer`` (``python -m saes.cache``),
``reader`` (``CacheStream``, an ``ActivationStream``).
"""
