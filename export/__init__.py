"""The export stage: `python -m export --model=PATH.keras --output=DIR`.

A thin absl program over `tfmetric.export.export_for_serving`; see
`python -m export --helpfull` for the flags.
"""
