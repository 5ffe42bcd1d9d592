"""Config files that ship with mmjax: `--config demo` runs demo.py here.

Each file's `get_config()` returns a ConfigDict built on
`mmjax.config.default_config()`; some take an argument (`demo.py:small`).
"""
