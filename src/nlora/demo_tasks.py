"""Three small generated tasks with different label sets, for the offline demo.

Made from templates and a seeded RNG (nothing from any dataset), written in the CL_Benchmark layout so the
demo runs through exactly the same code as a real experiment. Each task is easy on its own; what the demo
shows is what happens to the earlier ones when a model learns them in turn.
"""

from __future__ import annotations

import random
from pathlib import Path

from .io import write_json

TOPIC_WORDS = {
    "sports": (
        ["The home team", "The striker", "The coach", "The goalkeeper", "The champion", "The sprinter"],
        ["wins", "loses", "celebrates", "prepares for", "dominates"],
        ["the final", "the league title", "the derby", "the marathon", "the cup match", "the semifinal"],
    ),
    "business": (
        ["The bank", "The retailer", "Shareholders", "The startup", "The airline", "The carmaker"],
        ["reports", "cuts", "raises", "announces", "questions"],
        ["quarterly profits", "the merger", "its prices", "the share buyback", "new funding", "its budget"],
    ),
    "science": (
        ["Astronomers", "The laboratory", "Biologists", "Physicists", "The research team", "Chemists"],
        ["discover", "study", "measure", "publish results on", "observe"],
        [
            "a distant planet",
            "a rare enzyme",
            "a quantum effect",
            "a fossil species",
            "a gene variant",
            "a new molecule",
        ],
    ),
}
TOPIC_TAILS = ["", " this week", " on Monday", " after a long delay", " in a surprise move", " again"]

PRODUCTS = ["blender", "phone case", "backpack", "desk lamp", "kettle", "headphone set", "novel", "tent"]
REVIEW_WORDS = {
    "positive": (
        ["excellent", "wonderful", "great", "delightful", "superb", "reliable"],
        ["I would buy it again.", "Highly recommended.", "Worth every cent.", "It made my day."],
    ),
    "negative": (
        ["terrible", "awful", "flimsy", "disappointing", "useless", "noisy"],
        ["I want a refund.", "Never again.", "A waste of money.", "It broke in a week."],
    ),
}


def _headline(rng: random.Random) -> dict:
    label = rng.choice(sorted(TOPIC_WORDS))
    subjects, verbs, objects = TOPIC_WORDS[label]
    text = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}{rng.choice(TOPIC_TAILS)}."
    return {"label": label, "sentence": text}


def _review(rng: random.Random) -> dict:
    label = rng.choice(sorted(REVIEW_WORDS))
    adjectives, comments = REVIEW_WORDS[label]
    text = f"The {rng.choice(PRODUCTS)} was {rng.choice(adjectives)}. {rng.choice(comments)}"
    return {"label": label, "sentence": text}


ITEM_WORDS = {
    "animal": ["dog", "cat", "horse", "eagle", "shark", "rabbit", "lion", "goat", "owl", "frog"],
    "food": ["bread", "apple", "cheese", "rice", "soup", "carrot", "pizza", "honey", "plum", "noodles"],
    "vehicle": ["bus", "truck", "bicycle", "train", "boat", "tractor", "scooter", "van", "ferry", "tram"],
}
ITEM_TEMPLATES = [
    "There was a {} by the road.",
    "She pointed at the {}.",
    "A {} appeared in the photo.",
    "He asked about the {}.",
    "Everyone looked at the {} in the yard.",
]


def _item(rng: random.Random) -> dict:
    label = rng.choice(sorted(ITEM_WORDS))
    return {"label": label, "sentence": rng.choice(ITEM_TEMPLATES).format(rng.choice(ITEM_WORDS[label]))}


# dataset name -> (category, labels, instruction, generator)
DEMO_TASKS = {
    "headlines": (
        "Topic",
        ["sports", "business", "science"],
        "What is the topic of the headline? Choose one from the option.\n",
        _headline,
    ),
    "reviews": (
        "Sentiment",
        ["positive", "negative"],
        "What is the sentiment of the review? Choose one from the option.\n",
        _review,
    ),
    "items": (
        "Kind",
        ["animal", "food", "vehicle"],
        "What kind of thing is mentioned in the sentence? Choose one from the option.\n",
        _item,
    ),
}


def write_demo_tasks(dest: str | Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Write the tasks under ``dest`` (``<Category>/<dataset>/``) and ``dest/instructions.json``."""
    dest = Path(dest)
    instructions = {}
    for i, (name, (category, labels, instruction, make)) in enumerate(DEMO_TASKS.items()):
        rng = random.Random(seed * 100 + i)
        folder = dest / category / name
        write_json(folder / "labels.json", labels)
        for split, n in (("train", n_train), ("test", n_test), ("dev", n_test)):
            write_json(folder / f"{split}.json", [make(rng) for _ in range(n)])
        instructions[category] = instruction
    write_json(dest / "instructions.json", instructions)
    return dest
