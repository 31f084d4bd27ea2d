"""Loading models: the loader registry, the loaders, and the weight files they read.

`services.inference.loading.loaders` imports every loader module, which registers its
loaders in `registry.LOADERS`; import it once (with torch) before looking loaders up.
"""
