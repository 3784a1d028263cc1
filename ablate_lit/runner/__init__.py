"""One run: its settings, its identity and store, the parts of the experiment and its loop over the
schedule, the result writer, and the export of one point."""
