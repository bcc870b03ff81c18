"""Built-in datasets that work fully offline.

Every set is either generated here from a seed, hand-written here, or read from an
installed PyPI package, so nothing is downloaded and importing this module reads no
files. Records have exactly the keys the engine's data module accepts.
"""

from __future__ import annotations

import csv
import importlib.util
import random
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BuiltinSet:
    name: str
    format: str  # "multiple_choice" | "classification" | "prompt_completion" | "chat"
    description: str
    labels: tuple[str, ...] = ()
    #: The package extra its records come from ('' for the sets generated or written here).
    extra: str = ""


# --------------------------------------------------------------------------------------
# reading-mc: generated reading comprehension
# --------------------------------------------------------------------------------------
# "What is this passage mainly about?" with the four topics always in the same option
# order. Why: measured on the embedded 135M model, with shuffled options it does not
# learn to bind an option's text to its letter within a 3-minute CPU budget (it swings
# between always-A and always-B), while with a fixed order it learns the passage ->
# letter mapping within ~30 LoRA steps. Passages are assembled from sentence frames and
# word lists, so validation passages are new combinations, not repeats.
_NAMES = (
    "Mia",
    "Tom",
    "Ava",
    "Leo",
    "Zoe",
    "Sam",
    "Ivy",
    "Ben",
    "Eva",
    "Max",
    "Lily",
    "Noah",
    "Ella",
    "Omar",
    "Rosa",
    "Finn",
    "Nina",
    "Hugo",
    "Lena",
    "Ravi",
    "Yuki",
    "Carl",
    "Anna",
    "Jack",
)
_TOPICS = {
    "cooking": (
        (
            "{n} {v} the {x} and added a little {y}.",
            "The {x} needed more {y}, so {n} {v} it again.",
            "After {n} {v} the {x}, the kitchen smelled of {y}.",
            "{n} always {v} the {x} with some {y}.",
        ),
        ("chopped", "stirred", "roasted", "baked", "seasoned", "simmered", "fried", "tasted", "warmed", "boiled"),
        ("onions", "soup", "carrots", "potatoes", "sauce", "rice", "stew", "mushrooms", "beans", "noodles"),
        ("salt", "butter", "garlic", "pepper", "olive oil", "cream", "basil", "lemon juice", "sugar", "thyme"),
    ),
    "sport": (
        (
            "{n} {v} the {x} past the {y}.",
            "In the second half {n} {v} the {x} towards the {y}.",
            "The coach watched as {n} {v} the {x} near the {y}.",
            "{n} {v} the {x} and the crowd by the {y} cheered.",
        ),
        ("kicked", "passed", "threw", "hit", "caught", "carried", "served", "blocked", "won", "shot"),
        ("ball", "puck", "shuttlecock", "rugby ball", "football", "tennis ball", "baseball", "frisbee"),
        ("goalkeeper", "net", "defender", "referee", "finish line", "penalty box", "goal", "stadium", "scoreboard"),
    ),
    "weather": (
        (
            "In the {y}, {x} {v} over the hills.",
            "{n} noticed that {x} {v} across the valley in the {y}.",
            "Early in the {y}, {x} {v} over the town.",
            "{n} stayed inside because {x} {v} through the {y}.",
        ),
        ("rolled", "drifted", "swept", "poured", "gathered", "spread", "moved", "lingered"),
        (
            "dark clouds",
            "heavy rain",
            "thick fog",
            "a cold wind",
            "snow",
            "a thunderstorm",
            "hail",
            "drizzle",
            "a warm breeze",
            "a gale",
        ),
        ("morning", "afternoon", "evening", "night", "early hours", "late afternoon"),
    ),
    "travel": (
        (
            "{n} {v} a {x} to reach the {y}.",
            "With a {x} booked, {n} finally {v} it to the {y}.",
            "{n} checked the map, {v} a {x} and arrived at the {y}.",
            "At the {y}, {n} {v} a {x} for the next stage of the trip.",
        ),
        ("boarded", "caught", "took", "rented", "missed", "waited for", "found", "booked", "changed", "chose"),
        ("train", "ferry", "flight", "bus", "taxi", "night train", "boat", "coach", "hire car", "cable car"),
        (
            "airport",
            "harbour",
            "hostel",
            "border",
            "old town",
            "hotel",
            "station",
            "island",
            "mountain village",
            "coast",
        ),
    ),
}
_READING_SIZE = 2000


def _reading_mc(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    topics = list(_TOPICS)
    # Exactly balanced answer letters, in shuffled order, so a model stuck on one letter
    # scores chance (25%) and collapse is visible in the answer distribution.
    answers = [i % len(topics) for i in range(n)]
    rng.shuffle(answers)
    records = []
    for a in answers:
        frames, verbs, things, places = _TOPICS[topics[a]]
        sentences = []
        for frame in rng.sample(frames, 3):
            s = frame.format(n=rng.choice(_NAMES), v=rng.choice(verbs), x=rng.choice(things), y=rng.choice(places))
            sentences.append(s[0].upper() + s[1:])
        records.append(
            {
                "context": " ".join(sentences),
                "question": "What is this passage mainly about?",
                "options": list(topics),
                "answer": "ABCD"[a],
            }
        )
    return records


# --------------------------------------------------------------------------------------
# bbb: real molecules from B3DB
# --------------------------------------------------------------------------------------
_BBB_LABELS = ("BBB+", "BBB-")


def _bbb(n: int | None, seed: int) -> list[dict]:
    # find_spec locates the package without importing it: B3DB's __init__ eagerly loads
    # ~80 MB of tables with pandas, while we only need the 2.6 MB classification TSV. Whether it is
    # installed at all is `BuiltinSet.extra`'s to say (checked by `data.read_records`).
    spec = importlib.util.find_spec("B3DB")
    path = Path(list(spec.submodule_search_locations)[0]) / "B3DB_classification.tsv"
    with open(path, newline="", encoding="utf-8") as f:
        rows = [(r["SMILES"], r["BBB+/BBB-"]) for r in csv.DictReader(f, delimiter="\t")]
    by_label = {lab: sorted(s for s, label in rows if label == lab and s) for lab in _BBB_LABELS}
    rng = random.Random(seed)
    for smiles in by_label.values():
        rng.shuffle(smiles)
    # Always class-balanced (the source is 63% BBB+): equal counts of each label, so a model that
    # gives one constant answer scores 50% and the majority baseline means what it says. Without
    # `n`, the BBB+ molecules are subsampled down to the number of BBB- ones.
    per_label = min(len(s) for s in by_label.values())
    total = 2 * per_label if n is None else min(n, 2 * per_label)
    half = [total - total // 2, total // 2]
    picked = [(s, lab) for lab, k in zip(_BBB_LABELS, half) for s in by_label[lab][:k]]
    rng.shuffle(picked)
    return [{"text": s, "label": lab} for s, lab in picked]


# --------------------------------------------------------------------------------------
# Hand-written sets for looking at token masks
# --------------------------------------------------------------------------------------
_INSTRUCTIONS = (
    ("Translate to French: good morning", "Bonjour."),
    ("Translate to Spanish: thank you very much", "Muchas gracias."),
    ("Translate to German: where is the station?", "Wo ist der Bahnhof?"),
    ("What is the capital of Japan?", "Tokyo."),
    ("What is the capital of Canada?", "Ottawa."),
    ("What is 12 times 7?", "84."),
    ("What is 45 plus 38?", "83."),
    ("What is 100 minus 37?", "63."),
    ("Give the plural of 'mouse'.", "Mice."),
    ("Give the past tense of 'run'.", "Ran."),
    ("Give the opposite of 'ancient'.", "Modern."),
    ("Give a synonym for 'happy'.", "Cheerful."),
    ("Spell 'necessary' backwards.", "yrassecen"),
    ("Put these in alphabetical order: pear, apple, fig", "apple, fig, pear"),
    ("Sort these numbers from smallest to largest: 9, 2, 7, 4", "2, 4, 7, 9"),
    ("How many days are in a leap year?", "366."),
    ("How many legs does a spider have?", "Eight."),
    ("Which planet is closest to the Sun?", "Mercury."),
    ("What gas do plants take in from the air?", "Carbon dioxide."),
    ("At what temperature in Celsius does water boil at sea level?", "100 degrees Celsius."),
    ("Name the three primary colours of paint.", "Red, yellow and blue."),
    ("Write a haiku about rain.", "Soft rain on the roof\nthe gutters hum a low tune\nthe garden drinks deep"),
    ("Write one sentence describing autumn.", "Autumn paints the trees in amber and red while the air turns crisp."),
    (
        "Summarise in five words: The meeting was moved from Monday to Wednesday because the room was booked.",
        "Meeting moved to Wednesday, room booked.",
    ),
    ("Rewrite politely: Give me the report now.", "Could you please send me the report when you have a moment?"),
    ("Correct the grammar: She don't like apples.", "She doesn't like apples."),
    ("Correct the spelling: I recieved the pakage.", "I received the package."),
    ("Turn into a question: The shop opens at nine.", "Does the shop open at nine?"),
    ("Classify the sentiment as positive or negative: The film was a delight.", "Positive."),
    ("Classify the sentiment as positive or negative: The food was cold and bland.", "Negative."),
    ("Extract the year: The bridge was completed in 1932 after four years of work.", "1932."),
    ("Extract the name: Yesterday Maria Lopez won the chess tournament.", "Maria Lopez."),
    ("Convert 3 kilometres to metres.", "3000 metres."),
    ("Convert 2 hours to minutes.", "120 minutes."),
    ("What comes next: 2, 4, 8, 16, ...", "32."),
    ("What comes next: Monday, Tuesday, Wednesday, ...", "Thursday."),
    ("Write a Python expression for the square of x.", "x ** 2"),
    (
        "Write a Python function that returns the larger of two numbers.",
        "def larger(a, b):\n    return a if a >= b else b",
    ),
    ("Explain in one sentence what a noun is.", "A noun is a word that names a person, place, thing or idea."),
    ("Give one tip for sleeping better.", "Keep a regular bedtime and avoid screens for the last hour before sleep."),
)

_CHATS = (
    (
        (
            "Hi! Can you help me plan a picnic?",
            "Of course. How many people are coming, and where would you like to go?",
        ),
        (
            "Four people, at the park by the lake.",
            "Nice spot. Bring a blanket, sandwiches, fruit, water and a bag for rubbish.",
        ),
        (
            "What if it rains?",
            "Pick a spot near the park shelter, or pack a small tarp and move the picnic under the trees.",
        ),
    ),
    (
        (
            "What is a prime number?",
            "A whole number greater than 1 whose only divisors are 1 and itself, like 2, 3, 5 or 7.",
        ),
        ("Is 9 prime?", "No. 9 is 3 times 3, so it has a divisor other than 1 and 9."),
        ("And 11?", "Yes, 11 is prime."),
    ),
    (
        (
            "I want to start running. Any advice?",
            "Start slowly: alternate one minute of running with two of walking for twenty minutes.",
        ),
        ("How often?", "Three times a week, with a rest day in between."),
        (
            "When can I run without walking?",
            "After a few weeks, once the running parts feel easy, lengthen them gradually.",
        ),
    ),
    (
        (
            "How do I boil an egg?",
            "Put the egg in boiling water. Six minutes gives a soft yolk, ten minutes a hard one.",
        ),
        (
            "How do I stop it cracking?",
            "Lower it in gently with a spoon and take it out of the fridge a few minutes before.",
        ),
        ("Thanks!", "You're welcome. Enjoy your egg."),
    ),
    (
        ("Can you recommend a book for a long train ride?", "What kind of stories do you like?"),
        ("Mysteries, mostly.", "Try a classic detective novel; short chapters suit a journey with stops."),
        (
            "Something shorter?",
            "A collection of short mystery stories would fit nicely: you can finish one between stations.",
        ),
    ),
    (
        (
            "What's the difference between weather and climate?",
            "Weather is the conditions on a given day; climate is the average over many years.",
        ),
        (
            "So a cold week doesn't mean the climate is cooling?",
            "Right. One week is weather; a trend over decades is climate.",
        ),
    ),
    (
        ("My plant's leaves are turning yellow.", "That often means too much water. How often do you water it?"),
        ("Every day.", "Most houseplants prefer the soil to dry out a little between waterings. Try once a week."),
        ("Should I cut the yellow leaves?", "Yes, remove them so the plant puts its energy into healthy growth."),
    ),
    (
        ("How many minutes are in a day?", "There are 1,440 minutes in a day."),
        ("And seconds?", "86,400 seconds."),
        ("In a week?", "604,800 seconds."),
    ),
    (
        ("Can you give me a word that rhymes with 'light'?", "Night."),
        ("Another one?", "Bright."),
        ("One with two syllables?", "Delight."),
    ),
    (
        ("I keep forgetting my keys.", "Try a fixed spot: a bowl or hook by the door where they always go."),
        ("I forget to use the bowl too.", "Put the bowl where you can't miss it, right next to the door handle."),
        ("Good idea.", "Small habits like that stick after a couple of weeks."),
    ),
    (
        (
            "Why is the sky blue?",
            "Air scatters blue sunlight more than red, so blue light reaches us from every direction.",
        ),
        (
            "Then why are sunsets red?",
            "At sunset light travels through more air, and most of the blue is scattered away before it reaches you.",
        ),
    ),
    (
        ("What should I name my new cat?", "What does the cat look like?"),
        ("Grey with white paws.", "How about Socks, Misty or Pebble?"),
        ("Pebble is cute.", "Pebble it is. Congratulations on the new cat!"),
    ),
    (
        ("How do I say 'cheers' in Italian?", "'Salute' or, informally, 'cin cin'."),
        ("And in Swedish?", "'Skål'."),
        ("In Japanese?", "'Kanpai'."),
    ),
    (
        ("Help me write a short thank-you note to my neighbour.", "Sure. What did they do for you?"),
        (
            "They watered my garden while I was away.",
            "Dear neighbour, thank you so much for watering my garden while I was away. Everything is thriving!",
        ),
        (
            "Make it a bit warmer.",
            "Dear neighbour, thank you so much for looking after my garden. "
            "Coming home to happy plants was lovely. Coffee is on me!",
        ),
    ),
    (
        ("Which is heavier, a kilo of feathers or a kilo of iron?", "They weigh the same: one kilogram each."),
        ("Which takes up more space?", "The feathers, by far, because they are much less dense."),
    ),
    (
        (
            "I need a quick vegetarian dinner.",
            "How about a vegetable stir-fry with rice? It takes about twenty minutes.",
        ),
        ("I don't have rice.", "Use noodles, or serve it with bread or on its own with a fried egg."),
        ("No eggs either.", "Then add a handful of nuts or some beans for protein."),
    ),
    (
        ("How long should I steep green tea?", "About two to three minutes, in water around 80 degrees Celsius."),
        ("Why not boiling water?", "Boiling water makes green tea bitter."),
    ),
    (
        ("What does 'ubiquitous' mean?", "Present everywhere, or seeming to be."),
        ("Use it in a sentence.", "Smartphones have become ubiquitous in city life."),
    ),
    (
        ("Can you quiz me on capitals?", "Sure. What is the capital of Australia?"),
        ("Sydney?", "Close, but it's Canberra. Next: what is the capital of Kenya?"),
        ("Nairobi.", "Correct! Well done."),
    ),
    (
        (
            "How do I make my bike chain quieter?",
            "Clean it with a rag, then apply a few drops of chain oil while turning the pedals.",
        ),
        ("How often?", "Every few hundred kilometres, or after riding in the rain."),
        ("Too much oil?", "Wipe off the excess; extra oil attracts dirt."),
    ),
    (
        (
            "What time zone is London in?",
            "Greenwich Mean Time in winter and British Summer Time, one hour ahead, in summer.",
        ),
        ("When does it change?", "On the last Sunday of March and the last Sunday of October."),
    ),
    (
        ("I'm nervous about a presentation tomorrow.", "That's normal. Have you practised it out loud?"),
        ("Once.", "Practise it two more times, ideally in front of a friend, and time yourself."),
        ("What if I forget what to say?", "Keep short notes with one keyword per slide; a glance is usually enough."),
    ),
    (
        ("Convert 20 degrees Celsius to Fahrenheit.", "20 degrees Celsius is 68 degrees Fahrenheit."),
        ("And 0?", "32 degrees Fahrenheit."),
        ("And 100?", "212 degrees Fahrenheit."),
    ),
    (
        (
            "What's a good stretch after sitting all day?",
            "Stand up, clasp your hands behind your back and gently lift them to open your chest.",
        ),
        ("For the neck?", "Slowly tilt your ear towards your shoulder and hold for twenty seconds on each side."),
    ),
    (
        ("Tell me a fun fact.", "Octopuses have three hearts."),
        ("Another!", "Honey found in ancient Egyptian tombs was still edible."),
        ("One more.", "A group of flamingos is called a flamboyance."),
    ),
    (
        ("How do I remove a coffee stain from a shirt?", "Rinse it from the back with cold water as soon as possible."),
        ("It's already dry.", "Rub in a little liquid detergent, leave it for ten minutes, then wash as usual."),
    ),
    (
        ("What's the plural of 'cactus'?", "Both 'cacti' and 'cactuses' are accepted."),
        ("Which is more common?", "'Cacti' is more common in writing."),
    ),
    (
        ("Help me pick a board game for three people.", "Do you prefer strategy or something quick and silly?"),
        ("Strategy.", "A trading or tile-laying game works well with three and takes about an hour."),
        ("Something shorter?", "Try a card game with simple rules; many play in twenty minutes."),
    ),
    (
        ("How far is the Moon?", "About 384,000 kilometres on average."),
        ("How long does light take to get here from it?", "A little over one second."),
    ),
    (
        ("Can you check my sentence? 'Their going to the market.'", "It should be 'They're going to the market.'"),
        ("Why?", "'They're' is short for 'they are'; 'their' shows possession."),
    ),
)


def _instructions() -> list[dict]:
    return [{"prompt": p, "completion": c} for p, c in _INSTRUCTIONS]


def _chats() -> list[dict]:
    # A system turn on every third conversation, so the mask views show that case too.
    out = []
    for i, turns in enumerate(_CHATS):
        msgs = [{"role": "system", "content": "You are a friendly, concise assistant."}] if i % 3 == 0 else []
        for user, assistant in turns:
            msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        out.append({"messages": msgs})
    return out


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------
BUILTIN_SETS: dict[str, BuiltinSet] = {
    s.name: s
    for s in (
        BuiltinSet(
            "reading-mc",
            "multiple_choice",
            "GENERATED reading comprehension (up to 2,000 records, deterministic for a seed): a three-sentence "
            "passage about cooking, sport, weather or travel, assembled from sentence frames and word lists "
            "written for this lab, and the question 'What is this passage mainly about?' with the four topics "
            "as options A-D in a fixed order. Answer letters are balanced. Easy for people; the embedded model "
            "starts at chance because it answers every question with the same letter, and learns the task in "
            "a few dozen LoRA steps. Released with the lab, no external source or licence terms.",
        ),
        BuiltinSet(
            "bbb",
            "classification",
            "Blood-brain barrier permeability of 7,807 real molecules from B3DB (Meng et al., Scientific Data "
            "2021), via the PyPI package qc-B3DB (CC0 public domain; pip install qc-B3DB). Each record is a "
            "molecule as a SMILES string labelled BBB+ (crosses the barrier) or BBB- (does not). Class-balanced: "
            "the source is 63% BBB+, so the lab keeps all 2,851 BBB- molecules and as many BBB+ ones (5,702 "
            "records; a limit takes equal halves). A hard task for a small language model: expect modest gains.",
            labels=_BBB_LABELS,
            extra="demo",
        ),
        BuiltinSet(
            "instructions",
            "prompt_completion",
            f"{len(_INSTRUCTIONS)} short instruction/answer pairs (translation, arithmetic, grammar, short "
            "writing), hand-written for this lab and released with it. Too small to train on seriously; meant "
            "for looking at prompt and completion token masks.",
        ),
        BuiltinSet(
            "chat",
            "chat",
            f"{len(_CHATS)} short multi-turn conversations (two or three assistant turns each, some with a "
            "system message), hand-written for this lab and released with it. Meant for looking at how "
            "multi-turn token masks weight each assistant turn.",
        ),
    )
}


def load_builtin(name: str, n: int | None = None, seed: int = 0) -> list[dict]:
    """Records of a built-in set; n caps the count (a deterministic subsample for `seed`)."""
    if name not in BUILTIN_SETS:
        raise KeyError(f"unknown built-in set {name!r}; known sets: {', '.join(BUILTIN_SETS)}")
    if name == "reading-mc":
        return _reading_mc(_READING_SIZE if n is None else min(n, _READING_SIZE), seed)
    if name == "bbb":
        return _bbb(n, seed)
    records = _instructions() if name == "instructions" else _chats()
    if n is not None and n < len(records):
        records = random.Random(seed).sample(records, n)
    return records


# --------------------------------------------------------------------------------------
# General English for the forgetting probe
# --------------------------------------------------------------------------------------
_GENERAL_TEXT = (
    "To make a simple tomato sauce, warm a little olive oil in a pan and soften a chopped onion for a few "
    "minutes. Add garlic, then a tin of tomatoes and a pinch of salt. Let it bubble gently for twenty minutes, "
    "stirring now and then, until it thickens.",
    "The first bicycles had no pedals at all. Riders sat on a wooden frame and pushed themselves along with "
    "their feet. Pedals attached to the front wheel came later, and the chain drive that powers most bikes "
    "today arrived only towards the end of the nineteenth century.",
    "Clouds form when warm, moist air rises and cools. As it cools, the water vapour condenses into tiny "
    "droplets around specks of dust. When the droplets grow heavy enough, they fall as rain, or as snow if "
    "the air near the ground is cold.",
    "A good night's sleep starts well before bedtime. Daylight in the morning helps set the body clock, and "
    "a cool, dark room makes it easier to drift off. Many people find that a fixed wake-up time matters more "
    "than a fixed bedtime.",
    "Bread rises because yeast feeds on the sugars in flour and releases carbon dioxide. Kneading builds "
    "a stretchy network of gluten that traps the gas in small pockets. In the oven the pockets expand, and "
    "the crust sets around them.",
    "Honeybees tell each other where to find flowers by dancing. A bee returning to the hive moves in a "
    "figure of eight, and the angle of the straight part shows the direction of the food relative to the "
    "sun. The longer the dance, the farther away the flowers are.",
    "The town library moved into the old railway station last spring. The ticket hall became a reading "
    "room, and the platform, now glassed in, holds the children's books. On weekday afternoons it is "
    "busier than the station ever was.",
    "Lighthouses once needed keepers who lived beside the lamp, trimming wicks and winding the clockwork "
    "that turned the lens. Today most are automatic, but many keepers' cottages have become small museums "
    "or holiday homes.",
    "When you plant tomatoes, bury the stem deeper than it sat in the pot. The buried part grows extra "
    "roots, which makes the plant sturdier and better at finding water during a dry summer.",
    "A map is a set of choices. The mapmaker decides what to show and what to leave out, which way is up, "
    "and how to flatten a round world onto a sheet of paper. No flat map can keep every distance and shape "
    "correct at once.",
    "In cold weather, dress in layers rather than one thick coat. A thin layer next to the skin moves sweat "
    "away, a middle layer keeps warmth in, and an outer layer blocks the wind and rain. Layers can be taken "
    "off as you warm up.",
    "The piano was first called the pianoforte, meaning soft-loud, because unlike the harpsichord it could "
    "play both quietly and loudly depending on how hard the keys were struck. Its hammers hit the strings "
    "instead of plucking them.",
    "Rivers rarely run straight. Water flows faster on the outside of a bend, wearing the bank away, and "
    "slower on the inside, where sand and gravel settle. Over many years the bends grow wider and wander "
    "across the valley.",
    "Our street holds a market every Saturday morning. There is a stall of cheeses, a man who sharpens "
    "knives, and a baker whose cinnamon buns sell out before ten. By noon the stalls are packed away and "
    "the street is quiet again.",
    "Learning a language is easier in small daily doses than in long weekly sessions. Ten minutes of "
    "review each day keeps words fresh, and speaking aloud, even to yourself, helps the sounds feel "
    "natural.",
    "Early clocks were not very accurate and had to be reset often using sundials. The pendulum clock, "
    "developed in the seventeenth century, was a great improvement, keeping time to within a minute or so "
    "each day.",
    "A compost heap turns kitchen scraps and garden waste into rich soil. It works best with a mix of "
    "green material, such as vegetable peelings and grass, and brown material, such as dry leaves and "
    "cardboard, kept moist and turned now and then.",
    "Thunder is the sound of air expanding suddenly as lightning heats it. Because light travels much "
    "faster than sound, you see the flash first. Counting the seconds until the thunder gives a rough idea "
    "of how far away the storm is.",
    "The first railways carried coal, not people. Horses pulled wagons along wooden rails, and only later "
    "did steam engines take over. Passenger trains soon followed, and within a few decades railways had "
    "changed how far people could travel in a day.",
    "To keep cut flowers fresh for longer, trim the stems at an angle, remove any leaves below the water "
    "line, and change the water every two days. A cool spot away from direct sun and fruit bowls also "
    "helps.",
    "Owls can turn their heads much farther than people can, because their eyes are fixed in place and "
    "cannot move in their sockets. Soft edges on their feathers let them fly almost silently while hunting "
    "at night.",
    "Paper was made by hand for centuries, from rags beaten into pulp and spread on fine screens to dry. "
    "Machines that produced long continuous rolls appeared in the nineteenth century, and wood pulp soon "
    "replaced rags.",
    "A sourdough starter is just flour and water left to ferment. Wild yeasts and bacteria from the air "
    "and the flour settle in, and with regular feeding the mixture becomes lively enough to raise a loaf "
    "without any bought yeast.",
    "Walking in a forest tends to feel calmer than walking along a busy road, even over the same distance. "
    "The sounds are softer, the air is often cooler, and there is always something small to notice: a "
    "beetle, a mushroom, a bird overhead.",
    "The school orchestra rehearses on Tuesday evenings in the hall. The violins sit at the front, the "
    "brass at the back, and the percussion to one side so that the drums do not drown out everyone else.",
    "Snowflakes form around tiny particles high in the clouds. Their six-sided shapes come from the way "
    "water molecules fit together as they freeze, and small changes in temperature and humidity give each "
    "flake its own pattern.",
    "Before refrigerators, people kept food cool in cellars, in running streams, or in ice houses packed "
    "with blocks cut from frozen lakes in winter. Salting, drying and pickling kept food from spoiling for "
    "months.",
    "A budget does not have to be complicated. Write down what comes in each month, then what goes out, "
    "starting with rent and bills. Whatever is left can be split between savings and the things you enjoy.",
    "The moon does not make its own light. It reflects sunlight, and as it travels around the Earth we see "
    "different parts of its sunlit side, which is why it seems to grow from a thin crescent to a full disc "
    "and back again.",
    "Most kites fly best in a steady breeze, not a strong gusty wind. Stand with your back to the wind, let "
    "out a little line, and give a gentle tug as the wind catches the kite so that it climbs.",
)


def general_text() -> list[str]:
    """Short general-English passages for the forgetting (perplexity) probe.

    Original text written for this lab (no external source), on everyday topics that
    have nothing to do with the training sets, so a rise in perplexity on them signals
    that fine-tuning is eroding general language ability.
    """
    return list(_GENERAL_TEXT)
