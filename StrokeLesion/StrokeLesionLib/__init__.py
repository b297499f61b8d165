"""The whole case on the engine (AIFSelectorLib): orchestration and outputs (``case``), the deep lesion
models (``lesion_models``), their metrics, the StrokeLesion module's Logic (``mrml``) and the command line.
Depends on AIFSelectorLib, never the reverse."""
