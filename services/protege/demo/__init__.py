"""`protege demo`: the whole loop on real data, on this machine.

It starts the broker, the Serve app and the improver (`protege.stack`), replays a
data set as client traffic (`traffic`), lets simulated reviewers answer a share of
the predictions from the gold labels (`reviewers`), shows progress live
(`progress`), and ends with a summary table (`summary`) and a chart (`chart`) in
a run folder. `record` keeps what happened; `model_events` reads the improver's
decisions from Kafka; `runner` ties them together.
"""
