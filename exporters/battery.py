"""The built-in validation battery: real text of every shape the runtime must get right."""

from __future__ import annotations

SHORT_QUERIES = [
    "How big is London",
    "what is the capital of france?",
    "The weather is lovely today.",
    "It's so sunny outside!",
    "He drove to the stadium.",
    "best pizza near me",
    "python list comprehension example",
    "symptoms of vitamin d deficiency",
]

PASSAGES = [
    "London has 9,787,426 inhabitants at the 2011 census. It is the capital and largest city of England "
    "and the United Kingdom, and stands on the River Thames in south-east England at the head of a "
    "50-mile estuary down to the North Sea.",
    "Paris is the capital and most populous city of France. Since the 17th century it has been one of the "
    "world's major centres of finance, diplomacy, commerce, culture, fashion and gastronomy. For its "
    "leading role in the arts and sciences and its early system of street lighting, in the 19th century "
    "it became known as the City of Light.",
    "Vitamin D deficiency can lead to a loss of bone density, which can contribute to osteoporosis and "
    "fractures. Severe deficiency can also lead to other diseases. In children it can cause rickets, a "
    "rare disease that causes the bones to become soft and bend.",
]

MULTILINGUAL = [
    "Wie groß ist Berlin? Die Stadt hat etwa 3,7 Millionen Einwohner.",
    "¿Dónde está la estación de tren más cercana?",
    "Москва — столица России и крупнейший город страны.",
    "東京は日本の首都であり、世界最大の都市圏の一つです。",
    "北京是中华人民共和国的首都。",
    "مرحبا بالعالم، كيف حالك اليوم؟",
    "नमस्ते, आप कैसे हैं?",
    "Ça va très bien, merci beaucoup !",
]

ODD = [
    "a",
    "?",
    "",
    "   ",
    "I love this! 😀🎉👍🏽",
    "👩‍👩‍👧‍👦",
    "e\u0301te\u0301 cafe\u0301 (combining accents)",
    "UPPER CASE AND lower case AND MiXeD",
    "x" * 300,
    "tab\tseparated\nnew line",
]


def long_text(words: int = 1200) -> str:
    """A passage far longer than any max_seq_length we export (512 at most in the table)."""
    base = " ".join(p for p in PASSAGES).split()
    out = []
    while len(out) < words:
        out.extend(base)
    return " ".join(out[:words])


def battery() -> list[tuple[str, str]]:
    """(tag, text) pairs. Tags say which class of input an item stands for in the report."""
    items = [("query", t) for t in SHORT_QUERIES]
    items += [("passage", t) for t in PASSAGES]
    items += [("multilingual", t) for t in MULTILINGUAL]
    items += [("odd", t) for t in ODD]
    items += [("over_max_seq_length", long_text()), ("over_max_seq_length", long_text(700) + " the end")]
    return items


# Calibration text for int8 quantization: kept apart from the validation battery above, so the
# accuracy recorded in the manifest is measured on text the quantizer never saw.
CALIBRATION = [
    "how do i reset my password",
    "cheap flights to new york in december",
    "what is the boiling point of water at altitude",
    "Who wrote the novel Pride and Prejudice?",
    "convert celsius to fahrenheit",
    "side effects of ibuprofen",
    "When did the Berlin wall fall?",
    "Best way to learn a new language as an adult",
    "The mitochondria is the powerhouse of the cell, producing most of the chemical energy needed to power "
    "the cell's biochemical reactions.",
    "The Great Wall of China is a series of fortifications built across the historical northern borders of "
    "ancient Chinese states to protect against nomadic groups from the Eurasian Steppe.",
    "Photosynthesis is the process by which green plants use sunlight, water and carbon dioxide to create "
    "oxygen and energy in the form of sugar.",
    "A balanced diet includes a variety of fruits, vegetables, whole grains, lean proteins and healthy fats. "
    "Limiting processed foods and added sugars helps maintain a healthy weight and reduces disease risk.",
    "Die Katze schläft auf dem Sofa.",
    "Il pleut beaucoup à Paris en novembre.",
    "El tren sale a las ocho de la mañana.",
    "Рим — столица Италии.",
    "我喜欢在周末读书。",
    "今日はとても暑いです。",
    "Great product, would buy again!!! ⭐⭐⭐⭐⭐",
    "ERROR 404: page not found",
    "x = np.linspace(0, 1, 100)  # sample points",
    "OK",
    "Thanks",
    "!",
    "??",
    "hi",
    "😊",
    "Wow!!! 🔥🔥 so good",
    "Merci 🙏",
    "The industrial revolution began in Britain in the late eighteenth century and spread to Western Europe "
    "and North America. It marked the shift from hand production to machines, new chemical manufacturing and "
    "iron production processes, the increasing use of steam power and water power, the development of machine "
    "tools and the rise of the mechanised factory system. Output greatly increased, and the standard of living "
    "for the general population began to rise steadily for the first time in history, although working "
    "conditions in early factories were often harsh and child labour was common.",
    "To make a simple bread, mix flour, water, salt and yeast into a dough, knead it for about ten minutes "
    "until it is smooth and elastic, then leave it covered in a warm place until it has doubled in size. "
    "Shape the loaf, let it rise again for half an hour, and bake it in a hot oven until the crust is golden "
    "and the bottom sounds hollow when tapped. Let it cool on a rack before slicing, otherwise the crumb "
    "will be gummy. Many bakers add a tray of water to the oven to create steam for a crisper crust.",
    "Machine learning models are trained by minimising a loss function over a data set, usually with a variant "
    "of stochastic gradient descent. Regularisation, early stopping and data augmentation reduce overfitting, "
    "while a held-out validation set estimates how the model will perform on new data. Transformer networks, "
    "which rely on self-attention rather than recurrence, now dominate natural language processing and are "
    "increasingly used for images, audio and protein structures.",
    "The stock market fell sharply on Monday as investors worried about rising interest rates and slowing "
    "growth in major economies, with technology shares leading the decline.",
]


def pair_battery() -> list[tuple[str, tuple[str, str]]]:
    """[title, passage] pairs as DPR context encoders and nq-distilbert take them (tokenized as a pair, with
    token_type_ids for BERT), including pairs whose halves must be truncated longest-first."""
    items = [
        ("pair", ("London", PASSAGES[0])),
        ("pair", ("Paris", PASSAGES[1])),
        ("pair", ("Vitamin D", PASSAGES[2])),
        ("pair", ("How big is London", "London has 9,787,426 inhabitants")),
        ("pair", ("", "an empty title")),
        ("pair", ("a title with no text", "")),
        ("pair_over_max_seq_length", ("A short title", long_text(600))),
        ("pair_over_max_seq_length", (long_text(300), long_text(500))),
    ]
    return items


def rerank_battery() -> list[tuple[str, tuple[str, str]]]:
    """(query, passage) pairs: every short query with every passage, in query-major order, so that a reranker's
    ranking of the passages for each query can be compared."""
    documents = PASSAGES + SHORT_QUERIES[:6]
    return [("rerank", (q, d)) for q in RERANK_QUERIES for d in documents]


RERANK_QUERIES = ["How big is London", "what is the capital of france?", "vitamin d deficiency", "a"]


def image_battery() -> list[tuple[str, object]]:
    """Deterministic generated images of every shape image preprocessing must get right: landscape, portrait,
    square, smaller than the crop, large, grayscale, with alpha, palette. Needs Pillow."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.RandomState(1234)

    def scene(w: int, h: int, seed: int) -> Image.Image:
        r = np.random.RandomState(seed)
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack(
            [(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), np.full_like(x, r.randint(0, 256))], -1
        ).astype(np.uint8)
        img = Image.fromarray(base)
        draw = ImageDraw.Draw(img)
        for _ in range(3):
            x0, y0 = r.randint(0, max(w - 2, 1)), r.randint(0, max(h - 2, 1))
            draw.ellipse([x0, y0, x0 + r.randint(1, w), y0 + r.randint(1, h)], fill=tuple(r.randint(0, 256, 3)))
        return img

    items: list[tuple[str, object]] = [
        ("image_landscape", scene(96, 64, 1)),
        ("image_portrait", scene(45, 80, 2)),
        ("image_square", scene(50, 50, 3)),
        ("image_smaller_than_crop", scene(9, 13, 4)),
        ("image_large", scene(640, 480, 5)),
        ("image_noise", Image.fromarray(rng.randint(0, 256, size=(70, 71, 3), dtype=np.uint8))),
        ("image_grayscale", scene(64, 48, 6).convert("L")),
        (
            "image_rgba",
            Image.fromarray(
                np.concatenate(
                    [np.asarray(scene(60, 40, 7)), rng.randint(0, 256, size=(40, 60, 1), dtype=np.uint8)], -1
                ),
                "RGBA",
            ),
        ),
        ("image_palette", scene(57, 57, 8).convert("P")),
        ("image_one_pixel", Image.new("RGB", (1, 1), (200, 30, 90))),
    ]
    return items
