"""What every part of qadapter shares: settings, base-model loading, errors, the Q-adapter knobs and
math, the LoRA host, the chat encoder, sampling and the offline decode loop."""
