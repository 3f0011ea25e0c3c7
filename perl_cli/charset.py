"""The character-level vocabulary of the built-in models (tiny ones and real-shape ones).

Its own module so that perl_cli/models.py and perl_cli/shapes.py share it without
importing each other.
"""

PAD, EOS = "<pad>", "<eos>"
# Every character a compact Countdown prompt or completion can contain.
CHARSET = "0123456789 \n+-*/()=:<>abcdefghijklmnopqrstuvwxyz"
