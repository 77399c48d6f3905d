"""Per-family parameter inventories: one function per model family builds a
:class:`estimator.families.build.FamilyBuild` from a config.json, mirroring the modules
transformers creates for that family; :mod:`estimator.config_json` picks the family."""
