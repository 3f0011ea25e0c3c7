"""The Textual live monitor behind `perl watch` (imported only by that command)."""
