"""``python -m tornado_gateway --devstack``: the gateway plus in-process stand-ins of the six services.

SPEC §8 and docs/services.md say what each stand-in answers; ``launch`` starts them.
"""
