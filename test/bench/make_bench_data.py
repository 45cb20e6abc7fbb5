#!/usr/bin/env python3
"""Write the benchmark's labelled sentences: ROWS lines of "text<TAB>label",
5 to 60 words each, deterministic (seeded), four classes keyed by topic
words.  Standard library only.

    python3 test/bench/make_bench_data.py OUT.tsv [ROWS]
"""
import random
import sys

TOPICS = {
    "billing": ["invoice", "charge", "refund", "payment", "price", "card", "bill"],
    "shipping": ["delivery", "package", "courier", "tracking", "shipment", "box"],
    "account": ["password", "login", "profile", "email", "username", "settings"],
    "product": ["battery", "screen", "button", "camera", "speaker", "charger"],
}
FILLER = ("the a my our this that it is was were be have has had and or but "
          "not very really quite so too of to in on at for with from by about "
          "as we you he she they when after before again still only just "
          "yesterday today week month order store team support help please "
          "thanks problem question issue update new old small big first last "
          "because since while then there here what why how who can could "
          "would should will did does done make made get got see saw").split()


def sentence(rng, label):
    """One sentence of 5..60 words with one to three topic words."""
    words = [rng.choice(FILLER) for _ in range(rng.randint(5, 60))]
    for _ in range(rng.randint(1, 3)):
        words[rng.randrange(len(words))] = rng.choice(TOPICS[label])
    return " ".join(words).capitalize() + rng.choice([".", "!", "?", ""])


def main():
    out = sys.argv[1]
    rows = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    rng = random.Random(2026)
    labels = sorted(TOPICS)
    with open(out, "w", encoding="utf-8") as f:
        for _ in range(rows):
            label = rng.choice(labels)
            f.write("%s\t%s\n" % (sentence(rng, label), label))


if __name__ == "__main__":
    main()
