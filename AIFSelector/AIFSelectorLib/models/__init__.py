"""Model support shared by every network: weights registry and checks, device, network blocks."""
