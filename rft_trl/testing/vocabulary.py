"""Words of the synthetic tasks, shared by the tokenizer's training corpus and the datasets."""

# Name -> RGB. Eight colours, so a policy that guesses scores 1/8.
COLOUR_RGB = {
    "red": (220, 20, 20),
    "green": (20, 180, 20),
    "blue": (20, 40, 220),
    "yellow": (230, 220, 20),
    "purple": (140, 20, 170),
    "orange": (240, 140, 10),
    "white": (245, 245, 245),
    "black": (10, 10, 10),
}
COLOURS = list(COLOUR_RGB)

# Name -> frequency in Hz of the tone.
PITCH_HZ = {"high": 2400.0, "low": 300.0}
PITCHES = list(PITCH_HZ)

MOTIONS = ["moving", "static"]

# The pattern task: is the stripes' spatial frequency high or low (the pitch words, so the tokenizer knows them).
FREQUENCIES = ["high", "low"]
# Stripe period in pixels (half of it coloured) of each frequency: several stripes, or one, per 14-pixel patch.
STRIPE_PERIOD = {"high": 4, "low": 14}

# The text task: the answer is the word that follows the given word in this cycle.
TEXT_WORDS = ["apple", "river", "stone", "cloud", "tiger", "piano"]
