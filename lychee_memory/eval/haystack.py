"""Generated haystack text: encyclopedia-style paragraphs about invented places, so needle tasks need no dataset.

The needle tasks plant facts in long filler contexts. Their filler used to be SQuAD paragraphs read from a
dataset directory; :func:`generated_paragraphs` gives a drop-in pool of ``(title, paragraph)`` pairs instead,
written by this module's own templates and word lists (no text is copied from any dataset, book or website, so
no dataset licence applies). The prose is gazetteer-like: towns, rivers, trades, festivals, guilds, buildings,
weather and local history, with invented names, years, distances and counts. It is deterministic for a seed,
fast (no model), plain ASCII, and never competes with the planted facts of :mod:`lychee_memory.eval.tasks`: no
codes or five-digit numbers, none of the needles' phrases, and generated names are checked against the names
the needles use.
"""

from __future__ import annotations

import functools
import random
import re

from . import needles

DEFAULT_POOL_SIZE = 2000  # about 440K tokens under SmolLM2's tokenizer, 1M under the tiny test tokenizer
MIN_WORDS, MAX_WORDS = 80, 200

# Word lists ------------------------------------------------------------------------------------------------

_ONSETS = (
    "Al Ar Bel Bra Cor Dal Den Eld Esk Fal Gar Gil Har Hel Ist Jor Kel Kor Lam Lor Mal Nor Ols Pen Ran Ros Sel "
    "Sten Tar Thal Ul Wen Wyr Yar Zel Brom Cael Drev Frin Grel Hask Lund Mosk Ovin Rath Skel Trev Wald"
).split()
_LINKS = "a e i o an en in ar er or el il".split()
_PLACE_ENDS = (
    "by dale ford holt mere mouth ness stead thorpe ton worth bury field haven ley moor stow wold brook ham side "
    "hythe beck wick garth"
).split()
_RIVER_ENDS = "ey en ow wy isk ent an ith ora une ell ast"
_SURNAMES = "ard sen by ley ford wright mane holm rick ett ow ing well hurst lock"
_FIRST = (
    "Aldous Berit Casimir Delphine Eamon Freya Gideon Hester Ivo Jorund Katrin Leopold Mirela Niamh Osric Petra "
    "Quentin Rosalind Sigrun Tobias Ulla Viggo Wenna Xavier Yvette Zenon Agathe Bertil Clemence Dagny Edwin Frida "
    "Gaspard Hilde Ingram Jessamy Konrad Liesel Magnus Nell"
).split()
_REGION_KINDS = "Vale Downs Fells Marsh Lowlands Hundred Wolds Uplands Heath Levels".split()
_CRAFTS = [
    row.split("/")
    for row in (
        "rope making/ropemakers/rope;salt boiling/salters/salt;glass blowing/glassblowers/glass;"
        "bell casting/bellfounders/bells;dyeing/dyers/dyed cloth;tanning/tanners/leather;lace making/lacemakers/"
        "lace;barrel making/coopers/barrels;paper making/papermakers/paper;cheese making/cheesewrights/cheese;"
        "charcoal burning/charcoal burners/charcoal;slate quarrying/quarrymen/slate;clock making/clockmakers/clocks;"
        "candle making/chandlers/candles;boat building/shipwrights/boats;basket weaving/basket weavers/baskets;"
        "pottery/potters/glazed pots;brewing/brewers/ale;ink making/inkmakers/ink;wool combing/woolcombers/combed "
        "wool;map making/mapmakers/maps;bookbinding/bookbinders/bound books;cider pressing/cider makers/cider;"
        "lens grinding/lens grinders/lenses;saddlery/saddlers/saddles;thatching/thatchers/reed thatch;"
        "bee keeping/beekeepers/honey;felt making/felters/felt;stone carving/carvers/carved stone"
    ).split(";")
]
# Words drawn once per paragraph, so a title and its sentences agree.
_ONCE = {
    "craftrow": _CRAFTS,
    "building": "Abbey;Lighthouse;Corn Exchange;Observatory;Almshouse;Mill;Chapel;Market Hall;Customs House;Priory;"
    "Toll House;Granary;Bathhouse;Ropewalk;Guildhall;Manor;Castle;Library;Infirmary;Theatre;Clock House".split(";"),
    "thing": "Lantern Ribbon Candle Apple Bell Kite Lamb Barley Honey Straw Boat Mask Chestnut Ember Plough".split(),
    "kind": "Fair Feast Festival Wake Procession Night Week Race Market".split(),
    "feast": ["{thing} {kind} of {town}", "{town} {thing} {kind}"],
    "event": "Siege;Treaty;Great Fire;Flood;Charter;Rising;Famine;Salt War;Bridge Dispute;Ice Winter;Toll Riot".split(
        ";"
    ),
    "Society": "Guild;Fellowship;Brotherhood;Society;Lodge;Worshipful Order".split(";"),
    "peak": "Mount {name};{name} Fell;{name} Pike;{name} Crag;{name} Beacon;{name} Knott".split(";"),
}
_ORDINALS = "ninth tenth eleventh twelfth thirteenth fourteenth fifteenth sixteenth seventeenth".split()

_WORDS = {
    "compass": "north south east west north-east north-west south-east south-west".split(),
    "old": "old ancient weathered narrow crooked low broad steep-roofed".split(),
    "material": "grey limestone;red sandstone;dark timber;knapped flint;yellow brick;blue slate;rough fieldstone;"
    "pale chalk blocks;river cobbles;oak beams".split(";"),
    "goods": "wool;salt;barley;timber;hides;cider;slate;honey;flax;oats;peat;hemp;rye;pears;lamp oil;tallow;apples;"
    "eels;turnips;millstones;dried fish;wax".split(";"),
    "crop": "barley oats rye flax hemp turnips wheat beans hops".split(),
    "fish": "trout eel pike grayling perch salmon bream chub".split(),
    "bird": "curlew lapwing owl swift plover rook wren starling".split(),
    "tree": "alder willow ash oak beech hazel birch yew elm".split(),
    "beast": "sheep goats ponies cattle pigs geese mules oxen".split(),
    "month": "January February March April May June July August September October November December".split(),
    "season": "spring summer autumn winter".split(),
    "weekday": "Monday Tuesday Wednesday Thursday Friday Saturday".split(),
    "ruler": "duke;countess;bishop;abbot;reeve;margrave;lord warden;prioress;town council;high sheriff".split(";"),
    "trade": "miller mason carter weaver clerk ferryman surveyor cooper smith baker tanner notary".split(),
    "wind": "a cold north wind;damp westerly gales;a dry wind off the hills;sea fog;long spells of drizzle".split(";"),
    "few": "two three four five six seven eight nine eleven twelve".split(),
    "record": "parish rolls;tithe books;toll ledgers;court rolls;guild minutes;manor rolls;church registers;"
    "ferry accounts;town books".split(";"),
    "said": "say;record;claim;agree;suggest;relate".split(";"),
    "sign": "Fox Plough Swan Wheel Anchor Lamb Barrel Hare Crown Wheatsheaf Bell Harp Ferryboat Mitre".split(),
    "good": "fine;plain;sturdy;handsome;modest;much admired;well kept".split(";"),
}


_NUMBERS = {"count": (12, 480), "big": (1100, 9800), "miles": (3, 160), "feet": (30, 2900), "height": (900, 9400)}
_NUMBERS |= {"inches": (18, 74), "days": (3, 40)}  # all below 10000: the needles' codes have five digits

# Templates, one topic per block: a title, an opening sentence, then body sentences; an indented line continues
# the one above. {slot} is a word, a number or a name fixed for the paragraph; [a|b] picks one alternative.
_TOPICS_TEXT = """
{town}
{town} is a [market town|small town|village|borough|river port] in {region}, [on|near|beside] the {river} and
    {miles} miles {compass} of {town2}.
In {year2} it had {big} [inhabitants|residents|souls], most of them [farmers|{crafters}|day labourers].
Its market, held every {weekday} since {year}, deals chiefly in {goods} and {goods}.
The [main street|high street|square] is lined with {old} houses of {material}.
A {good} church of {material} stands [at the top of the hill|by the green|near the ford].
The town received its charter from the {ruler} of {region} in {year}.
The road to {town2} crosses the {river} by a bridge of {few} arches built in {year3}.
{person}, a {trade} born here in {year2}, wrote a short account of the town's [fairs|streets|floods].
Local {crafters} sell {product} as far as {town2} and {town3}.
The [old|upper|lower] quarter burned in {year3} and was rebuilt in {material}.
[Fields of {crop}|Apple orchards|Sheep pastures] surround the town on its {compass} side.

River {rname}
The {rname} is a river of {region}, about {miles} miles long, rising on {hill} and [flowing|running|winding]
    {compass} to join the {river} below {town}.
Its upper course is fast and stony, with {fish} and {fish} in the pools.
[Below|Above|Near] {town2} the valley [widens|opens out|broadens] into [water meadows|flat pasture|rushy fields]
    grazed by {beast}.
There were {few} [corn mills|fulling mills|saw mills] on its banks in {year2}, of which one still turns.
Flat barges carried {goods} down to {town} until the {year3} floods silted the channel.
The {rname} floods most {season}s; in {year3} the water rose {few} feet in a single night.
{person}, a {trade} of {town2}, measured its fall at {feet} feet between source and mouth.
Its [banks|meadows|islands] are planted with {tree} and {tree}, and {bird}s nest in the reeds.
A ford at {town2} was replaced by a timber bridge in {year2} and by one of {material} in {year3}.
The name is said to mean [slow water|grey stream|the crooked one|alder river] in the old tongue.

{Craft} in {town}
{Craft} has been the chief trade of {town} since the {century} century, when the first {crafters} settled
    [beside|near|along] the {river}.
In {year2} the {record} list {count} {crafters} working in the town and its {few} hamlets.
Their {product} was sold at the {weekday} market and carried by cart to {town2}, {miles} miles away.
{person} opened the largest yard in {year3}, employing {count} hands at its height.
The trade needed {goods} and clean water, both of which the {river} valley supplied.
Apprentices served {few} years and paid their master in {goods} rather than coin.
By {year3} cheaper {product} from {region} had [halved|much reduced] the number of [yards|masters|shops], though [a
    few remain|{few} still work|the trade survives].
A small museum in the old [mill|granary|market hall|toll house] shows the tools and a {good} collection of
    {product}.
Disputes over {goods} prices with the {crafters} of {town2} went before the {ruler} in {year2}.

{feast}
The {feast} is held [each|every] {month} in {town}, and has been kept, [by local reckoning|the {record} suggest|so
    it is said], since {year}.
It opens with a procession from the [market hall|church|guildhall|castle gate] to the {river}, led by {few}
    drummers.
Children carry {thing} figures made of [straw|rushes|paper|cloth] and willow, which are burned at dusk.
In {year2} the {ruler} [tried to forbid it|banned it|ordered it stopped], but the [townspeople|young
    people|{crafters}] kept it [in the fields outside the walls|on the {compass} bank|in secret].
Stalls sell {goods}, {goods} and {product}, and a prize is given for the best {beast}.
Visitors come from {town2} and {town3}; in {year3} some {big} were counted on the main day.
{person}, a {trade}, described the [dancing|races|singing] in a letter of {year3}.
The feast lasts {few} days and ends with a [race|boat race|torchlit walk] along the {compass} bank of the {river}.

{Society} of {Crafters} of {town}
The {Society} of {Crafters} of {town} was founded in {year} by {few} masters of the trade of {craft}.
It met in a hall of {material} beside the [church|market hall|castle|river gate], bought in {year2} for {count}
    crowns.
Members swore to [keep fair weights|use true measures|sell only sound {product}], to train no more than {few}
    apprentices, and to [aid widows|bury their dead|keep the feast of {month}].
Its minutes survive from {year2} and name {person} as warden for {few} years.
The {society} fixed the price of {product} and fined members who sold below it in {town2}.
Every {month} the masters walked the bounds of {town}, a round of some {miles} miles.
A quarrel with the {ruler} over market tolls lasted from {year2} to {year3}.
It was dissolved in {year3}, and its [silver|plate|hall] was sold to [mend|widen|repair] the {river} bridge.

{name} {building}
The {name} {building} is a {good} building of {material} in {town}, begun in {year} and finished {few} years later.
Its [master mason|builder|designer] was {person}, who also worked at {town2}.
The front is {count} feet long and faces {compass} across the {river}.
It was paid for by the {ruler} with the tolls on {goods} and {goods}.
In {year2} a [fire|storm|lightning strike] [destroyed|wrecked|damaged] the roof, which was
    [replaced|rebuilt|renewed] in {material}.
The {building} was used as a school from {year2} to {year3}, and later as a store for {goods}.
Inside are {few} rooms, a staircase of {tree} wood and carvings of {beast} and {bird}s.
Restoration in {year3} cost {big} crowns, raised by the people of {town}.

Climate of {region}
The climate of {region} is [mild|cool|damp|changeable], with about {inches} inches of rain a year and {wind} in
    {season}.
Frost comes early on the high ground around {hill}, often by [September|October|November].
The valley of the {river} is sheltered, and the {crop} harvest comes in {few} weeks earlier than on the hills.
Fog lies on the lowlands near {town} on some {days} mornings a year.
The hard winter of {year2} froze the {river} for {days} days and killed many {beast}.
{person}, a {trade} of {town2}, kept a weather journal from {year2} to {year3}.
Summer storms from the {compass} can bring hail large enough to strip the {tree} trees.
The driest year in the {record} is {year3}, when wells at {town} ran low by {month}.

{event} of {town}
The {event} of {town} in {year} was the [chief|best remembered|most serious] event in the history of {region} during
    the {century} century.
It began in {month}, when the {ruler} raised the tolls on {goods} at the {river} crossing.
{person} led some {count} townspeople, mostly {crafters} and {trade}s, to the [market hall|castle gate|toll house].
For {days} days the roads to {town2} were closed and the market stood empty.
[Envoys|Arbiters|Two priors] from {town2} [settled|ended|resolved] the [matter|quarrel|dispute], and the [agreement
    was read|terms were read|settlement was proclaimed] in the [square|church|market place].
The {record} give the losses as {count} houses and the whole stock of {product}.
A stone set up in {year2} marks the place, {miles} miles {compass} of the town.
Later writers, among them {person2} in {year3}, disagreed about who was to blame.

{peak}
{peak} is a [hill|summit|height|peak] in {region}, some {miles} miles {compass} of {town}, rising to {height} feet.
Its slopes are covered with {tree} and {tree}, and {beast} graze the open ground.
A track over its shoulder was used by drovers taking {beast} to {town2} until {year2}.
The first careful map of it was drawn by {person} in {year2}.
Quarries on the {compass} side yielded {material} for the [abbey|castle|church|market hall] at {town}.
{bird}s and {bird}s breed here, and the {river} rises from springs on its flank.
Snow lies for about {days} days a year, and the way is often closed in [December|January|February|March].
A shelter of {material} was built in {year3} after {few} travellers were lost in a storm.
[From the top|From the summit|On a clear day] one can see {town2}, the {river} and the hills beyond {town3}.

Lake {name}
Lake {name} is a [long|narrow|shallow|deep|reedy] lake in {region}, {miles} miles {compass} of {town}, fed by the
    {river}.
It is about {few} miles long and {count} feet deep at its deepest point.
Fishermen from {town} take {fish} and {fish} from it, and [pay a yearly rent|owe a tithe of the catch|pay a toll] to
    the {ruler}.
A ferry has crossed it between {town} and {town2} since {year2}.
On the largest of its {few} islands stand the ruins of a [chapel|priory|mill|hermitage] abandoned in {year3}.
The lake froze [from shore to shore|over completely|solid] in the winter of {year3}, and [a fair was held|{few}
    booths stood|horses were raced] on the ice.
{person} of {town2} first sounded its depths in {year2}, using a weighted line.
Its shores are lined with {tree} woods, and {bird}s winter on the open water.
"""


def _topics(text: str) -> list[tuple[str, str, list[str]]]:
    """(title, opening, bodies) of each block of ``_TOPICS_TEXT``."""
    topics = []
    for block in text.strip().split("\n\n"):
        lines: list[str] = []
        for line in block.splitlines():
            if line.startswith(" "):
                lines[-1] += " " + line.strip()
            else:
                lines.append(line)
        topics.append((lines[0], lines[1], lines[2:]))
    return topics


_TOPICS = _topics(_TOPICS_TEXT)
_SHARED = [
    "The {record} of {town} mention {count} households there in {date}.",
    "A {trade} named {person3} is remembered for [a map|a ballad|a chronicle|a set of letters] of {date}.",
    "The nearest crossing of the {river} is at {town2}, {miles} miles to the {compass}.",
    "In {date} the {ruler} granted a yearly fair for {beast} and {goods}.",
    "Some {count} acres of {crop} were grown nearby in {date}, according to the {record}.",
    "Travellers in {month} were warned of {wind} on the road from {town3}.",
    "The district supplied {goods} and {product} to the markets of {town3}.",
    "{person3} left {count} crowns in {date} for the upkeep of the road to {town2}.",
    "A [stone cross|milestone|boundary stone] on the road to {town3} is dated {date}.",
    "Carriers ran to {town3} {few} times a week, taking {goods} and bringing back {goods}.",
    "The soil here is [thin and stony|heavy clay|light and sandy|rich and dark], best suited to {crop}.",
    "An inn called the {sign} and {sign} has stood by the [ford|green|crossroads] since {date}.",
]
_LEADS = ["According to the {record}, ", "As the {record} {said}, ", "Locally, ", "By most accounts, "]
_LOWER_FIRST = {"The", "Its", "It", "A", "In", "Every", "For", "Some", "Members", "Children", "Stalls"}


# Names -----------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _reserved() -> tuple[str, ...]:
    """Lowercased names the needle tasks use; a generated name containing one is drawn again."""
    words = [*needles.FIRST_NAMES, *needles.LAST_NAMES, *needles.COMPANIES, *needles.CITIES]
    for needle in needles.NEEDLES:
        words += re.findall(r"\b[A-Z][a-z]{3,}", needle.fact)
    return tuple(sorted({word.lower() for word in words}))


def _word(rng: random.Random, ends: list[str] | str, link: float = 0.35) -> str:
    """An invented capitalised word: an onset, sometimes a linking vowel, an ending; never a reserved name."""
    ends = ends.split() if isinstance(ends, str) else ends
    while True:
        word = rng.choice(_ONSETS) + (rng.choice(_LINKS) if rng.random() < link else "") + rng.choice(ends)
        if not any(name in word.lower() for name in _reserved()):
            return word


# Names and dates drawn once per paragraph; ``get`` reads another such slot, so derived ones agree with it.
_ENTITIES = {
    **dict.fromkeys(("town", "town2", "town3"), lambda rng, get: _word(rng, _PLACE_ENDS)),
    **dict.fromkeys(("person", "person2", "person3"), lambda rng, get: f"{rng.choice(_FIRST)} {_word(rng, _SURNAMES)}"),
    **dict.fromkeys(("river", "rname"), lambda rng, get: _word(rng, _RIVER_ENDS, 0.2)),
    "name": lambda rng, get: _word(rng, _PLACE_ENDS, 0.5),
    "hill": lambda rng, get: _word(rng, "ridge fell crag tor knoll edge", 0.3) + rng.choice(["", " Hill", " Moor"]),
    "region": lambda rng, get: f"the {_word(rng, _PLACE_ENDS, 0.2)} {rng.choice(_REGION_KINDS)}",
    "year": lambda rng, get: str(rng.randint(880, 1650)),
    "year2": lambda rng, get: str(int(get("year")) + rng.randint(6, 140)),
    "year3": lambda rng, get: str(int(get("year2")) + rng.randint(4, 90)),
    "century": lambda rng, get: _ORDINALS[int(get("year")) // 100 - 8],
    "craft": lambda rng, get: get("craftrow")[0],
    "Craft": lambda rng, get: get("craft").capitalize(),
    "crafters": lambda rng, get: get("craftrow")[1],
    "Crafters": lambda rng, get: get("crafters").title(),
    "product": lambda rng, get: get("craftrow")[2],
    "society": lambda rng, get: get("Society").lower(),
}
_SLOT = re.compile(r"\{(\w+)\}|\[([^\]]+)\]")


def _filler(rng: random.Random):
    """The fill function of one paragraph: names and years are drawn once and reused, words and numbers each
    time they appear."""
    fixed: dict[str, str] = {}

    def get(slot: str):
        if slot not in fixed:
            value = rng.choice(_ONCE[slot]) if slot in _ONCE else _ENTITIES[slot](rng, get)
            fixed[slot] = expand(value) if isinstance(value, str) and "{" in value else value
        return fixed[slot]

    def replace(match: re.Match[str]) -> str:
        slot, choices = match.groups()
        if choices is not None:
            return expand(rng.choice(choices.split("|")))
        if slot in _WORDS:
            return rng.choice(_WORDS[slot])
        if slot in _NUMBERS:
            return str(rng.randint(*_NUMBERS[slot]))
        if slot == "date":  # a fresh year within the paragraph's span, for sentences that stand alone
            return str(rng.randint(int(get("year")), int(get("year3")) + 30))
        return get(slot)

    def expand(template: str) -> str:
        return _SLOT.sub(replace, template)

    def fill(template: str) -> str:
        text = expand(template)
        return text[0].upper() + text[1:]

    return fill


def _sentence(fill, template: str, rng: random.Random) -> str:
    """One filled body sentence, now and then opened with a sourcing phrase."""
    first = template.split(" ", 1)[0]
    if first in _LOWER_FIRST and "{record}" not in template and rng.random() < 0.25:
        return fill(rng.choice(_LEADS) + template[0].lower() + template[1:])
    return fill(template)


def _paragraph(rng: random.Random) -> tuple[str, str]:
    """One (title, paragraph) pair of a random topic, between MIN_WORDS and MAX_WORDS words long."""
    fill = _filler(rng)
    title_template, opening, bodies = rng.choice(_TOPICS)
    title = fill(title_template)
    sentences = [fill(opening)]
    words, target = len(sentences[0].split()), rng.randint(95, 175)
    templates = bodies + rng.sample(_SHARED, rng.randint(1, 3))
    for template in rng.sample(templates, len(templates)):
        if words >= target:
            break
        sentence = _sentence(fill, template, rng)
        if words + len(sentence.split()) <= MAX_WORDS:
            sentences.append(sentence)
            words += len(sentence.split())
    text = re.sub(r"\b([Aa]) ([aeiouAEIOU])", r"\1n \2", " ".join(sentences))
    return title, text


def generated_paragraphs(count: int = DEFAULT_POOL_SIZE, seed: int = 0) -> list[tuple[str, str]]:
    """``count`` generated (title, paragraph) pairs, the same for the same ``seed``: a haystack pool shaped like
    ``tasks.load_squad_paragraphs``'s, with no dataset behind it."""
    rng = random.Random(f"lychee-haystack-{seed}")
    return [_paragraph(rng) for _ in range(count)]
