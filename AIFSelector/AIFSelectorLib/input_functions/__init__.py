"""Stage 2, arterial and venous input functions: manual, classic, AIFNet, quality flags, the selection policy."""
