"""Training and evaluation of Emojimation's emotion CNN (imports only the core)."""
