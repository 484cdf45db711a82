"""The plugin's Qt widgets, each bound to plain values and callables (no ``krita`` import), so a
test builds them offscreen under PyQt5 and PyQt6 (``tests/krita/test_krita_widgets.py``). Every Qt
import goes through :mod:`..qt`."""
