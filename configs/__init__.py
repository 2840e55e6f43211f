"""nanolab's Hydra configs, shipped in the package as `nanolab.configs` (see pyproject.toml)."""
