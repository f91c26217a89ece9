"""Long-tail vocabularies for the synthetic population's free-text fields (DESIGN.md 4.2).

Each entry is a short English string whose WORDS carry latent state ("retired schoolteacher",
"Galaxy A05 Lite", "index funds") and is mapped to the latent values it signals:

- an occupation signals ``life_stage`` and ``spending_power``;
- a device model signals ``spending_power``;
- an interest tag signals ``primary_interest``.

There are hundreds of entries and the generator draws them with a Zipf-like skew, so most
strings are rare: a counter of exact strings (one-hot) sees each too seldom to learn it, while a
model that reads the words ("retired", "junior", "Pro Max", "esports") can generalise. That gap is
what the benchmark must be able to show, or show absent.

The lists are composed from base words x modifiers where that keeps them meaningful English.
Everything here is deterministic and independent of any seed.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

from scaletot_features.taxonomy import Taxonomy


class Occupation(NamedTuple):
    text: str
    life_stage: str
    spending_power: str


class Device(NamedTuple):
    text: str
    spending_power: str


class InterestTag(NamedTuple):
    text: str
    primary_interest: str


_TIERS = ("low", "medium", "high")


def _shift(tier: str, by: int) -> str:
    """Move a spending tier up or down, clipped to the ends."""
    i = min(max(_TIERS.index(tier) + by, 0), len(_TIERS) - 1)
    return _TIERS[i]


# ---------------------------------------------------------------------------------------------
# Occupations: base roles (name, pay tier, kind); the kind says which modifiers read naturally.
# ---------------------------------------------------------------------------------------------
_ROLES: tuple[tuple[str, str, str], ...] = (
    # low pay
    ("cashier", "low", "service"),
    ("barista", "low", "service"),
    ("warehouse picker", "low", "service"),
    ("office cleaner", "low", "service"),
    ("delivery driver", "low", "service"),
    ("waiter", "low", "service"),
    ("kitchen porter", "low", "service"),
    ("care assistant", "low", "care"),
    ("farm labourer", "low", "craft"),
    ("shop assistant", "low", "service"),
    ("security guard", "low", "service"),
    ("call centre agent", "low", "office"),
    ("hairdresser", "low", "craft"),
    ("factory worker", "low", "craft"),
    ("bus driver", "low", "service"),
    ("postal worker", "low", "service"),
    ("hotel housekeeper", "low", "service"),
    ("bicycle courier", "low", "service"),
    ("taxi driver", "low", "service"),
    ("nanny", "low", "care"),
    ("bartender", "low", "service"),
    ("supermarket shelf stacker", "low", "service"),
    ("receptionist", "low", "office"),
    ("data entry clerk", "low", "office"),
    ("landscape gardener", "low", "craft"),
    ("painter and decorator", "low", "craft"),
    ("builder's labourer", "low", "craft"),
    ("school lunch supervisor", "low", "care"),
    # medium pay
    ("schoolteacher", "medium", "care"),
    ("nurse", "medium", "care"),
    ("electrician", "medium", "craft"),
    ("plumber", "medium", "craft"),
    ("accountant", "medium", "office"),
    ("graphic designer", "medium", "office"),
    ("police officer", "medium", "service"),
    ("paramedic", "medium", "care"),
    ("social worker", "medium", "care"),
    ("librarian", "medium", "office"),
    ("lab technician", "medium", "office"),
    ("civil engineer", "medium", "professional"),
    ("web developer", "medium", "office"),
    ("marketing coordinator", "medium", "office"),
    ("HR officer", "medium", "office"),
    ("chef", "medium", "craft"),
    ("carpenter", "medium", "craft"),
    ("physiotherapist", "medium", "care"),
    ("journalist", "medium", "office"),
    ("sales representative", "medium", "office"),
    ("IT support technician", "medium", "office"),
    ("office administrator", "medium", "office"),
    ("bank clerk", "medium", "office"),
    ("car mechanic", "medium", "craft"),
    ("dental hygienist", "medium", "care"),
    ("estate agent", "medium", "office"),
    ("insurance underwriter", "medium", "office"),
    ("logistics planner", "medium", "office"),
    ("pharmacist", "medium", "professional"),
    ("firefighter", "medium", "service"),
    ("train driver", "medium", "service"),
    ("midwife", "medium", "care"),
    ("university lecturer", "medium", "professional"),
    ("architect", "medium", "professional"),
    ("quantity surveyor", "medium", "professional"),
    # high pay
    ("software engineer", "high", "professional"),
    ("investment banker", "high", "professional"),
    ("surgeon", "high", "professional"),
    ("corporate lawyer", "high", "professional"),
    ("management consultant", "high", "professional"),
    ("airline pilot", "high", "professional"),
    ("dentist", "high", "professional"),
    ("hedge fund analyst", "high", "professional"),
    ("data scientist", "high", "professional"),
    ("anaesthetist", "high", "professional"),
    ("private equity associate", "high", "professional"),
    ("orthodontist", "high", "professional"),
    ("actuary", "high", "professional"),
    ("barrister", "high", "professional"),
    ("cardiologist", "high", "professional"),
    ("patent attorney", "high", "professional"),
    ("product manager at a tech company", "high", "office"),
    ("offshore oil rig engineer", "high", "craft"),
)

# (template, spending shift) per kind and life stage. "{r}" is the role.
_EARLY = {
    "service": (("trainee {r}", 0), ("part-time {r} in their first job", 0)),
    "craft": (("apprentice {r}", -1), ("trainee {r}", 0)),
    "care": (("trainee {r}", -1), ("newly qualified {r}", 0)),
    "office": (("junior {r}", 0), ("graduate {r}", 0)),
    "professional": (("junior {r}", 0), ("graduate trainee {r}", -1)),
}
_ESTABLISHED = {
    "service": (("senior {r}", 0), ("{r} with twenty years' experience", 0)),
    "craft": (("master {r}", 1), ("self-employed {r} with twenty years' experience", 0)),
    "care": (("senior {r}", 0), ("{r} with twenty years' experience", 0)),
    "office": (("senior {r}", 0), ("lead {r}", 1)),
    "professional": (("senior {r}", 0), ("principal {r}", 1)),
}
_FAMILY = (("{r} and mother of two", 0), ("{r} and father of three", 0), ("part-time {r} and parent", -1))
_RETIRED = (("retired {r}", 0), ("former {r}, now retired", 0), ("semi-retired {r}", 0))

_STUDY_SUBJECTS: tuple[tuple[str, str], ...] = (
    ("nursing", "low"), ("law", "medium"), ("medical", "medium"), ("computer science", "low"),
    ("economics", "low"), ("history", "low"), ("mechanical engineering", "low"),
    ("business", "low"), ("psychology", "low"), ("art and design", "low"), ("music", "low"),
    ("biology", "low"), ("chemistry", "low"), ("physics", "low"), ("mathematics", "low"),
    ("architecture", "medium"), ("journalism", "low"), ("sociology", "low"), ("philosophy", "low"),
    ("accounting", "low"), ("marketing", "low"), ("film studies", "low"),
    ("fashion design", "low"), ("pharmacy", "medium"), ("veterinary", "medium"),
    ("sports science", "low"), ("teacher training", "low"), ("English literature", "low"),
    ("politics", "low"), ("dentistry", "medium"), ("aerospace engineering", "low"),
    ("hospitality", "low"), ("culinary arts", "low"), ("game design", "low"),
    ("data science", "low"),
)
_STUDENT_EXTRA: tuple[Occupation, ...] = (
    Occupation("high school student", "student", "low"),
    Occupation("sixth-form student", "student", "low"),
    Occupation("secondary school pupil", "student", "low"),
    Occupation("college freshman", "student", "low"),
    Occupation("exchange student", "student", "medium"),
    Occupation("gap year student", "student", "low"),
    Occupation("part-time barista and university student", "student", "low"),
    Occupation("part-time cashier and college student", "student", "low"),
    Occupation("student living at home with parents", "student", "low"),
    Occupation("student on a full scholarship", "student", "low"),
    Occupation("student at a private boarding school", "student", "high"),
    Occupation("MBA student at a top business school", "student", "high"),
    Occupation("international student at a private university", "student", "high"),
    Occupation("student pilot at a flight academy", "student", "high"),
    Occupation("Ivy League undergraduate with a trust fund", "student", "high"),
    Occupation("finishing school student", "student", "high"),
    Occupation("student at an international school", "student", "high"),
    Occupation("conservatory student studying violin", "student", "medium"),
    Occupation("part-time student and weekend bartender", "student", "low"),
    Occupation("apprentice student at a technical college", "student", "low"),
)
_MISC: tuple[Occupation, ...] = (
    Occupation("job seeker", "early_career", "low"),
    Occupation("between jobs", "early_career", "low"),
    Occupation("gig economy driver", "early_career", "low"),
    Occupation("aspiring influencer", "early_career", "low"),
    Occupation("freelance content creator", "early_career", "medium"),
    Occupation("crypto day trader", "early_career", "high"),
    Occupation("founder of a funded startup", "early_career", "high"),
    Occupation("junior associate at a law firm", "early_career", "high"),
    Occupation("investment banking analyst", "early_career", "high"),
    Occupation("junior doctor", "early_career", "medium"),
    Occupation("homemaker", "family", "low"),
    Occupation("stay-at-home mum", "family", "medium"),
    Occupation("stay-at-home dad", "family", "medium"),
    Occupation("full-time carer for a disabled child", "family", "low"),
    Occupation("single parent working two jobs", "family", "low"),
    Occupation("childminder looking after her own toddlers", "family", "low"),
    Occupation("parent on maternity leave", "family", "medium"),
    Occupation("working mum in corporate finance", "family", "high"),
    Occupation("dad of four running a family business", "family", "high"),
    Occupation("company director", "established", "high"),
    Occupation("small business owner", "established", "medium"),
    Occupation("landlord with several rental properties", "established", "high"),
    Occupation("managing partner at a law firm", "established", "high"),
    Occupation("chief financial officer", "established", "high"),
    Occupation("regional sales director", "established", "high"),
    Occupation("long-serving factory foreman", "established", "low"),
    Occupation("pensioner", "retired", "low"),
    Occupation("retired, living on a state pension", "retired", "low"),
    Occupation("widowed pensioner", "retired", "low"),
    Occupation("retiree volunteering at a charity shop", "retired", "low"),
    Occupation("retired and spending winters abroad", "retired", "high"),
    Occupation("emeritus professor", "retired", "medium"),
    Occupation("retired army colonel", "retired", "medium"),
    Occupation("grandmother of six, retired", "retired", "medium"),
)


def _build_occupations() -> tuple[Occupation, ...]:
    out: list[Occupation] = []
    for subject, tier in _STUDY_SUBJECTS:
        out.append(Occupation(f"{subject} student", "student", tier))
    for subject, tier in _STUDY_SUBJECTS[:14]:
        out.append(Occupation(f"PhD student in {subject}".replace("in medical", "in medicine"),
                              "student", "low"))
    out.extend(_STUDENT_EXTRA)
    for role, tier, kind in _ROLES:
        for tpl, shift in _EARLY[kind]:
            out.append(Occupation(tpl.format(r=role), "early_career", _shift(tier, shift)))
        for tpl, shift in _ESTABLISHED[kind]:
            out.append(Occupation(tpl.format(r=role), "established", _shift(tier, shift)))
        for tpl, shift in _FAMILY:
            out.append(Occupation(tpl.format(r=role), "family", _shift(tier, shift)))
        for tpl, shift in _RETIRED:
            out.append(Occupation(tpl.format(r=role), "retired", _shift(tier, shift)))
    out.extend(_MISC)
    return _dedupe(out)


# ---------------------------------------------------------------------------------------------
# Device models: families x generations x variants, each with the spending power it signals.
# ---------------------------------------------------------------------------------------------
def _build_devices() -> tuple[Device, ...]:
    d: list[Device] = []

    def add(text: str, tier: str) -> None:
        d.append(Device(text, tier))

    # Apple: old models are hand-me-downs (low), recent base models medium, Pro / Pro Max high.
    for old in ("iPhone 6s", "iPhone 7", "iPhone 7 Plus", "iPhone 8", "iPhone SE (2nd generation)",
                "iPhone X", "iPhone XR"):
        add(old, "low")
    for gen in (11, 12, 13, 14, 15, 16, 17):
        recent = gen >= 15
        add(f"iPhone {gen}", "medium")
        if gen in (12, 13):
            add(f"iPhone {gen} mini", "medium")
        if gen >= 14:
            add(f"iPhone {gen} Plus", "high" if recent else "medium")
        add(f"iPhone {gen} Pro", "high" if gen >= 13 else "medium")
        add(f"iPhone {gen} Pro Max", "high")
    add("iPhone SE (3rd generation)", "medium")
    add("iPhone 16e", "medium")
    add("iPhone Air", "high")
    # Samsung Galaxy A (budget to mid), S (flagship), Z (foldables), M and J (budget / old).
    for code in ("02", "03", "04", "05", "06", "07"):
        add(f"Galaxy A{code}", "low")
        add(f"Galaxy A{code}s", "low")
        add(f"Galaxy A{code} Lite", "low")
    for num in (12, 13, 14, 15, 16, 17):
        add(f"Galaxy A{num}", "low")
        add(f"Galaxy A{num} 5G", "low")
    for num in (23, 24, 25, 26):
        add(f"Galaxy A{num} 5G", "low" if num < 25 else "medium")
    for num in (33, 34, 35, 36, 53, 54, 55, 56):
        add(f"Galaxy A{num} 5G", "medium")
    for gen in (21, 22, 23, 24, 25):
        add(f"Galaxy S{gen}", "medium" if gen < 24 else "high")
        add(f"Galaxy S{gen}+", "high")
        add(f"Galaxy S{gen} Ultra", "high")
        add(f"Galaxy S{gen} FE", "medium")
    for gen in (3, 4, 5, 6, 7):
        add(f"Galaxy Z Fold{gen}", "high")
        add(f"Galaxy Z Flip{gen}", "high")
    for old in ("Galaxy J2 Prime", "Galaxy J5", "Galaxy J7 Prime", "Galaxy S8", "Galaxy S9",
                "Galaxy M14", "Galaxy M15", "Galaxy M34"):
        add(old, "low")
    # Google Pixel.
    for gen in (6, 7, 8, 9):
        add(f"Pixel {gen}a", "medium")
    for gen in (7, 8, 9, 10):
        add(f"Pixel {gen}", "medium")
        add(f"Pixel {gen} Pro", "high")
    add("Pixel 9 Pro XL", "high")
    add("Pixel 9 Pro Fold", "high")
    add("Pixel 10 Pro Fold", "high")
    # Xiaomi / Redmi / Poco.
    for gen in (10, 12, 13, 14):
        add(f"Redmi {gen}", "low")
    for code in ("9A", "10A", "12C", "13C", "14C", "A2", "A3", "A3x"):
        add(f"Redmi {code}", "low")
    for gen in (11, 12, 13, 14):
        add(f"Redmi Note {gen}", "low")
        add(f"Redmi Note {gen} Pro", "medium")
        add(f"Redmi Note {gen} Pro+", "medium")
    for gen in (13, 14, 15):
        add(f"Xiaomi {gen}", "high")
        add(f"Xiaomi {gen} Ultra", "high")
        add(f"Xiaomi {gen}T", "medium")
    for name in ("Poco X6", "Poco X6 Pro", "Poco F6", "Poco M6", "Poco C65"):
        add(name, "low" if name in ("Poco M6", "Poco C65") else "medium")
    # Motorola.
    for code in ("04", "05", "14", "24", "34"):
        add(f"Moto G{code}", "low")
    for code in ("54", "84", "85"):
        add(f"Moto G{code} 5G", "medium")
    for name, tier in (("Motorola Edge 40", "medium"), ("Motorola Edge 50", "medium"),
                       ("Motorola Edge 50 Ultra", "high"), ("Motorola Razr 50", "medium"),
                       ("Motorola Razr 50 Ultra", "high"), ("Moto E13", "low"), ("Moto E22", "low")):
        add(name, tier)
    # Nokia, including feature phones.
    for name in ("Nokia 105", "Nokia 110 4G", "Nokia 2660 Flip", "Nokia 3310", "Nokia C12",
                 "Nokia C22", "Nokia C32", "Nokia G21", "Nokia G42"):
        add(name, "low")
    # Transsion and other budget brands.
    for gen in (10, 20, 30):
        add(f"Tecno Spark {gen}", "low")
        add(f"Tecno Spark {gen} Pro", "low")
    for gen in (20, 30):
        add(f"Tecno Camon {gen}", "low")
    add("Tecno Phantom V Fold", "high")
    for gen in (30, 40, 50):
        add(f"Infinix Hot {gen}", "low")
        add(f"Infinix Hot {gen}i", "low")
    add("Infinix Smart 8", "low")
    add("Infinix Zero 40", "medium")
    for name in ("itel A60", "itel A70", "itel P55", "Alcatel 1B", "Alcatel 1SE", "TCL 403",
                 "TCL 40 SE", "ZTE Blade A35", "ZTE Blade V50"):
        add(name, "low")
    for name in ("realme C51", "realme C53", "realme C55", "realme C61", "realme C65",
                 "realme Note 50"):
        add(name, "low")
    for name, tier in (("realme 12 Pro", "medium"), ("realme 12 Pro+", "medium"),
                       ("realme GT 6", "high"), ("realme GT 7 Pro", "high")):
        add(name, tier)
    # OnePlus, Oppo, Vivo, Honor, Huawei, Sony, Nothing, Asus.
    for gen in (11, 12, 13):
        add(f"OnePlus {gen}", "high")
    for name, tier in (("OnePlus Nord N30", "low"), ("OnePlus Nord CE4 Lite", "low"),
                       ("OnePlus Nord CE4", "medium"), ("OnePlus Nord 4", "medium"),
                       ("OnePlus Open", "high")):
        add(name, tier)
    for name, tier in (("Oppo A18", "low"), ("Oppo A38", "low"), ("Oppo A79", "low"),
                       ("Oppo Reno 11", "medium"), ("Oppo Reno 12 Pro", "medium"),
                       ("Oppo Find X8 Pro", "high"), ("Oppo Find N5", "high"),
                       ("Vivo Y17s", "low"), ("Vivo Y28", "low"), ("Vivo V30", "medium"),
                       ("Vivo V40 Pro", "medium"), ("Vivo X200 Pro", "high"),
                       ("Honor X6b", "low"), ("Honor X8b", "low"), ("Honor 200", "medium"),
                       ("Honor Magic6 Pro", "high"), ("Honor Magic V3", "high"),
                       ("Huawei Y6p", "low"), ("Huawei Y7a", "low"), ("Huawei nova 12", "medium"),
                       ("Huawei P60 Pro", "high"), ("Huawei Mate 60 Pro", "high"),
                       ("Huawei Mate X6", "high"), ("Sony Xperia 10 VI", "medium"),
                       ("Sony Xperia 1 VI", "high"), ("Nothing Phone (2a)", "medium"),
                       ("Nothing Phone (3)", "high"), ("CMF Phone 1", "low"),
                       ("Asus ROG Phone 9", "high"), ("Asus Zenfone 11 Ultra", "high"),
                       ("Fairphone 5", "medium")):
        add(name, tier)
    # Tablets.
    for name, tier in (("iPad (9th generation)", "medium"), ("iPad (10th generation)", "medium"),
                       ("iPad mini (6th generation)", "medium"), ("iPad Air 13-inch (M2)", "high"),
                       ("iPad Pro 13-inch (M4)", "high"), ("Galaxy Tab A9", "low"),
                       ("Galaxy Tab S9 Ultra", "high"), ("Amazon Fire 7", "low"),
                       ("Amazon Fire HD 8", "low"), ("Lenovo Tab M8", "low")):
        add(name, tier)
    return _dedupe(d)


# ---------------------------------------------------------------------------------------------
# Interest tags, each signalling one primary interest.
# ---------------------------------------------------------------------------------------------
_TAGS: dict[str, tuple[str, ...]] = {
    "gaming": (
        "esports", "speedrunning", "retro consoles", "Minecraft builds", "battle royale",
        "mobile RPGs", "gacha pulls", "Twitch streams", "ranked shooters", "MMORPG raids",
        "indie games", "game mods", "fighting games", "Pokemon cards", "Valorant",
        "League of Legends", "LAN parties", "tabletop RPGs", "Dungeons & Dragons", "VR gaming",
        "Roblox", "Fortnite", "Steam sales", "PC building", "mechanical keyboards",
        "game soundtracks",
    ),
    "shopping": (
        "sneaker drops", "flash sales", "coupon codes", "thrift finds", "streetwear",
        "luxury handbags", "skincare hauls", "K-beauty", "home decor", "unboxing videos",
        "cashback apps", "outlet shopping", "vintage fashion", "makeup tutorials", "perfume",
        "fine jewellery", "designer sample sales", "Black Friday deals", "grocery bargains",
        "IKEA hacks", "online auctions", "secondhand marketplaces", "capsule wardrobe",
        "nail art", "limited-edition collectibles",
    ),
    "finance": (
        "index funds", "crypto", "dividend stocks", "personal budgeting", "FIRE movement",
        "options trading", "forex", "real estate investing", "retirement planning",
        "side hustles", "credit scores", "tax tips", "ETFs", "stock market news", "bitcoin",
        "day trading", "fintech apps", "gold bullion", "mortgage rates", "pension planning",
        "budgeting spreadsheets", "angel investing", "saving for a house", "compound interest",
    ),
    "entertainment": (
        "K-pop", "anime", "reality TV", "true crime podcasts", "Marvel films", "celebrity gossip",
        "stand-up comedy", "film festivals", "binge-watching series", "live concerts", "hip-hop",
        "indie music", "musical theatre", "Bollywood", "horror movies", "TikTok trends", "memes",
        "vinyl records", "pop divas", "Eurovision", "late-night talk shows", "fan fiction",
        "soap operas", "award shows", "music festivals",
    ),
    "social": (
        "group chats", "meeting new people", "local meetups", "community events",
        "volunteering", "neighbourhood groups", "party planning", "birthday reminders",
        "video calls with family", "photo sharing", "family group chat", "church group",
        "pen pals", "language exchange", "hobby clubs", "wedding planning", "baby showers",
        "dating", "school reunions", "online forums", "making friends in a new city",
        "gossip with friends", "game nights with friends", "supper clubs",
    ),
    "fitness_health": (
        "marathon training", "yoga", "CrossFit", "home workouts", "calorie counting", "keto",
        "meditation", "cycling", "hiking", "weightlifting", "pilates", "running clubs",
        "sleep tracking", "mental health", "plant-based diet", "five-a-side football", "tennis",
        "open-water swimming", "pregnancy fitness", "bodybuilding", "triathlon",
        "sports nutrition", "step challenges", "healthy recipes", "physiotherapy exercises",
    ),
    "news_learning": (
        "world news", "history podcasts", "language learning", "online courses",
        "science explainers", "coding tutorials", "documentaries", "philosophy", "local news",
        "politics", "astronomy", "crossword puzzles", "economics explainers", "AI news",
        "exam prep", "TED talks", "museum exhibitions", "genealogy", "birdwatching",
        "book reviews", "chess openings", "space exploration", "fact-checking", "long reads",
    ),
}


def _build_tags() -> tuple[InterestTag, ...]:
    return _dedupe([InterestTag(t, interest) for interest, tags in _TAGS.items() for t in tags])


def _dedupe(entries: list) -> tuple:
    """Entries are keyed by their text; a repeated text would make one string mean two states."""
    seen: dict[str, object] = {}
    for e in entries:
        if e.text in seen and seen[e.text] != e:
            raise ValueError(f"vocabulary entry {e.text!r} is declared with two meanings")
        seen.setdefault(e.text, e)
    return tuple(seen.values())


def popularity_rank(text: str) -> int:
    """A fixed, seed-independent rank key: which entries are the head of the Zipf tail.

    A hash (not list position) so the common entries are not simply the first ones typed.
    """
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


OCCUPATIONS: tuple[Occupation, ...] = _build_occupations()
DEVICE_MODELS: tuple[Device, ...] = _build_devices()
INTEREST_TAGS: tuple[InterestTag, ...] = _build_tags()


def check_vocabularies(taxonomy: Taxonomy) -> None:
    """Every signalled value must exist in the taxonomy, and every latent group needs entries."""
    ls, sp, pi = (taxonomy[n].value_names for n in ("life_stage", "spending_power", "primary_interest"))
    for o in OCCUPATIONS:
        if o.life_stage not in ls or o.spending_power not in sp:
            raise ValueError(f"occupation {o.text!r} signals values the taxonomy lacks")
    for dv in DEVICE_MODELS:
        if dv.spending_power not in sp:
            raise ValueError(f"device {dv.text!r} signals {dv.spending_power!r}, not in {sp}")
    for t in INTEREST_TAGS:
        if t.primary_interest not in pi:
            raise ValueError(f"tag {t.text!r} signals {t.primary_interest!r}, not in {pi}")
    missing: list[tuple[str, ...]] = [(a, b) for a in ls for b in sp
               if not any(o.life_stage == a and o.spending_power == b for o in OCCUPATIONS)]
    missing += [(b,) for b in sp if not any(dv.spending_power == b for dv in DEVICE_MODELS)]
    missing += [(c,) for c in pi if not any(t.primary_interest == c for t in INTEREST_TAGS)]
    if missing:
        raise ValueError(f"latent groups with no vocabulary entries: {missing}")
