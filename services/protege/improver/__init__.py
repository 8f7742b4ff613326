"""The improver: turns the event log into better specialists, with nobody watching.

Folders, bottom to top: `data` (the store, gold, the lease), `labeling` (labeling
functions, the label model, their analysis), `training` (specialist families, ONNX
export, where training runs), `judge` (the exam, metrics, calibration, the gate).
`loop.run_round` is one round through them, top to bottom; `service` runs rounds on
their `triggers`, next to the intake of events.
"""
