"""Engine boundary: the ABC every inference engine implements, and the engines."""
