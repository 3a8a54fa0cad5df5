"""Figures (matplotlib, no display needed). One module per analysis; shared style in `style`."""
