"""Judging a candidate: the exam (held-out gold and the FM's answers on it), metrics
(`evaluate`), the cascade threshold (`calibrate`), the gate (`gate`), and the three
put together (`judgement`)."""
