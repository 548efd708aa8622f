"""The generation engine: one thread owns the model and decodes every running request per step."""
