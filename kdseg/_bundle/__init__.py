"""The recipe configs (`configs/*.py`) as installed with kdseg.

`configs` here is the repository's `configs/` folder (a link in a checkout, a
copy in a wheel), so that an installed kdseg without a checkout still has
its recipes: `kdseg.configs.put_on_path()` makes `import configs` work, and
`python -m kdseg.main --config configs/<name>.py` finds them.
"""
