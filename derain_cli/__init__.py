"""derain: remove rain streaks from photographs with pretrained deep networks.

The public API is small and imports torch only when first used::

    import derain_cli
    restorer = derain_cli.load("lpnet")            # default weights, device "auto"
    clean = restorer(pil_image_or_array_or_tensor)  # same type back
    results = derain_cli.derain_paths(["photos/"], output="out/")
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load", "Restorer", "derain_paths", "list_methods"]


def __getattr__(name: str):
    # Lazy so that `derain --version` and `import derain_cli` stay cheap (no torch import).
    if name in ("load", "Restorer", "derain_paths"):
        from derain_cli import api

        return getattr(api, name)
    if name == "list_methods":
        from derain_cli.methods import list_methods

        return list_methods
    raise AttributeError(f"module 'derain_cli' has no attribute {name!r}")
