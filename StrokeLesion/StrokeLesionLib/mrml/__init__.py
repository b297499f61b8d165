"""The StrokeLesion module's Logic on MRML nodes and the scene bundle of a whole case."""
