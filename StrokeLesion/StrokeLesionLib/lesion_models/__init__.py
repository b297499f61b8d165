"""The deep lesion models: a registry and one package per model (network, preprocessing, inference)."""
