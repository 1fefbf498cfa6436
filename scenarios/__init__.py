"""Model presets (models/*.toml) and sweep definitions (sweeps/*.toml), shipped as package data
(`impbench.scenarios`, see pyproject.toml)."""
