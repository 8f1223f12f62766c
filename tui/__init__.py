"""pouch's Textual TUI (installed as ``pouch_tui``)."""
