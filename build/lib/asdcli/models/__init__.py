"""Models: the five branches behind one interface, a registry, and shared building blocks."""
