"""GUI-free science of the StrokeLesion module: core/penumbra decision, volumes, the whole-case pipeline,
its command line and report, and (as they land) the deep lesion models. Depends on AIFSelectorLib,
never the reverse."""
