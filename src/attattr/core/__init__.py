"""The computation of attributions: nothing here knows about analyses, files of analyses, plots or the CLI."""
