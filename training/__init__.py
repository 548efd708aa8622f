"""Training and evaluation of Q-adapters (and the DPO/SFT baselines): `qadapter train` and `qadapter eval`."""
