"""A generator of a messy web corpus with ground truth, for the data-cleaning tests and benchmark.

Every page has a label saying what a cleaning pipeline should do with it:
    clean        a news-style article (keep), in HTML with navigation, cookie banner, sidebar, footer
    pii          a clean article with e-mails, phone numbers, IPs and card numbers in it (keep, redact);
                 it also carries decoys that are not PII (dates, prices, ISBNs, versions, bad-Luhn numbers)
    exact_dup    the same article text as an earlier page, under another URL and page template
    near_dup     an earlier article with ~1% of its words changed and an update line appended
    spam_keywords  SEO keyword lists
    spam_repetition  one advert line repeated
    boilerplate  a page of navigation links and short list items
    code         a programming tutorial with code (curly brackets)
    lorem        placeholder "lorem ipsum" text
    nsfw         adult spam prose with words from the bad-words list
    non_english  French, German or Spanish prose
Articles are generated from templates with a large vocabulary, so different articles share almost no
word 5-grams (like different real articles) while each reads as ordinary English prose.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass, field

NOUNS = """council bridge river school hospital museum library market harbour railway airport festival
team coach player season stadium match league budget report survey study researcher scientist engineer
farmer village city region province government minister committee company factory worker union contract
policy election voter campaign court judge lawyer witness police officer storm flood drought harvest
forest mountain valley coast island lake canal road tunnel station garden park theatre orchestra
composer painter exhibition gallery novel author publisher newspaper editor journalist interview
telescope satellite rocket laboratory vaccine patient doctor nurse clinic treatment medicine battery
turbine reactor pipeline network software startup investor price inflation mortgage tenant landlord
bakery restaurant chef recipe harvest vineyard cheese bread coffee tea chocolate cyclist runner marathon
volunteer charity donation neighbourhood archive manuscript historian archaeologist excavation temple
castle cathedral monastery glacier volcano earthquake bird whale dolphin bee butterfly wolf bear fox
telescope planet comet galaxy ocean reef algae plankton climate carbon emission forecast""".split()
ADJS = """new old local national regional small large ancient modern rural urban coastal northern southern
eastern western remarkable unusual ambitious careful detailed modest generous costly affordable rare
popular quiet busy historic recent early late young experienced independent public private annual
seasonal digital electric solar wooden stone narrow wide steep gentle fragile sturdy colourful""".split()
VERBS = """opened closed approved rejected announced delayed expanded reduced repaired restored studied
measured described recorded celebrated welcomed criticised supported funded designed built planted
discovered visited explored protected replaced reviewed published examined questioned praised tested
improved launched organised hosted completed abandoned rebuilt documented surveyed mapped""".split()
PLACES = """Riverton Eastbrook Millford Ashcombe Bramley Kestrel Bay Norwood Larkhill Westfield Harrowgate
Pinecrest Stonebridge Marlow Fairhaven Glenmore Oakridge Redcliffe Thornbury Wexley Calder Brookside
Elmstead Dunmore Halden""".split()
PEOPLE = """Maria Lopez|James Carter|Aiko Tanaka|Samuel Okafor|Elena Petrova|David Cohen|Fatima Rahman|
Lucas Moreau|Hannah Schmidt|Oliver Bennett|Priya Nair|Tomasz Nowak|Grace Mensah|Leo Rossi|Ingrid Larsen|
Chen Wei|Amara Diallo|Noah Fischer|Sofia Alvarez|Kwame Asante""".replace("\n", "").split("|")
TIMES = """last week|on Monday|earlier this year|in the spring|after months of debate|during the summer|
this morning|in the autumn|at the end of March|over the weekend|for the first time in a decade|
two years ago|late on Friday""".replace("\n", "").split("|")
ADVS = "quickly slowly carefully quietly recently finally gradually openly widely rarely".split()

TEMPLATES = [
    "The {adj} {noun} in {place} was {verb} {time}, according to {person}.",
    "{person}, who has worked on the {noun} for years, said the {adj} {noun2} had been {verb} {adv}.",
    "Residents of {place} {adv} {verb} the plan to build a {adj} {noun} near the {noun2}.",
    "Officials {verb} a {adj} report on the {noun} {time}, and they expect a decision soon.",
    "It is the first time that a {noun} of this size has been {verb} in {place}.",
    "Many people in {place} believe the {noun} will change the way the {noun2} works.",
    "{time}, {person} {verb} the {adj} {noun} and described it as a {adj2} success.",
    "The {noun} costs more than the {noun2}, but supporters say it will pay for itself.",
    "Critics argue that the {adj} {noun} was {verb} without enough attention to the {noun2}.",
    "Why does the {noun} matter so much to the people of {place}?",
    "There are now more than {num} {noun}s in the region, compared with {num2} ten years ago.",
    "{person} {verb} the {noun2} with a team of {num} volunteers from {place}.",
    "When the {noun} was {verb}, nobody expected the {noun2} to be {adj} as well.",
    "The {adj} {noun2} of {place} has long attracted visitors from across the country.",
    "Each {noun} is {verb} by hand, a process that can take several {unit}.",
    "In a statement, the {noun} said it had {verb} the {adj} {noun2} and would say more {time2}.",
    "Experts from {place} {verb} the results and found that the {noun} was {adj} but stable.",
    "The story of the {noun} began in {year}, when a {adj} {noun2} was {verb} near {place}.",
    "For {person}, the {adj} {noun} is a reminder of how much the town has changed.",
    "Nobody knows exactly how many {noun}s were {verb} before the records began.",
    "A spokesperson for {place} confirmed that {num} {noun}s had been {verb} so far.",
    "Local farmers say the {adj} weather has made the {noun} harder to manage.",
    "Some of the oldest {noun}s date back to {year}, and a few are still in use.",
    "The {noun2} remained {adj}, even as the {noun} grew {time}.",
    "Students from {place} helped {person} collect samples from the {noun}.",
    "If the {noun} succeeds, similar schemes could follow in {place} and beyond.",
    "Visitors can see the {adj} {noun} free of charge until the end of the month.",
    "{person} remembers when the {noun} was little more than a {adj} {noun2}.",
    "Funding for the {noun} comes partly from a {adj} grant and partly from donations.",
    "Questions remain about who will pay to maintain the {noun} in the long run.",
]
UNITS = ["days", "weeks", "months", "hours"]


def _sentence(rng: random.Random, template: str | None = None) -> str:
    t = template or rng.choice(TEMPLATES)
    s = t.format(adj=rng.choice(ADJS), adj2=rng.choice(ADJS), noun=rng.choice(NOUNS), noun2=rng.choice(NOUNS),
                 verb=rng.choice(VERBS), place=rng.choice(PLACES), person=rng.choice(PEOPLE),
                 time=rng.choice(TIMES), time2=rng.choice(TIMES), adv=rng.choice(ADVS),
                 num=rng.randint(12, 900), num2=rng.randint(3, 400), unit=rng.choice(UNITS),
                 year=rng.randint(1850, 2015))
    return s[0].upper() + s[1:]


def article(rng: random.Random) -> tuple[str, list[str]]:
    """(title, paragraphs) of a clean article: each template at most once, so that an article does not
    repeat itself more than real prose does (which the Gopher repetition rules would rightly catch)."""
    title = f"{rng.choice(ADJS).capitalize()} {rng.choice(NOUNS)} {rng.choice(VERBS)} in {rng.choice(PLACES)}"
    sizes = [rng.randint(3, 5) for _ in range(rng.randint(4, 6))]
    templates = iter(rng.sample(TEMPLATES, sum(sizes)))
    paras = [" ".join(_sentence(rng, next(templates)) for _ in range(n)) for n in sizes]
    return title, paras


NAV = ["Home", "News", "Sport", "Business", "Culture", "Travel", "Weather", "Contact us"]
BOILERPLATE_LINES = [
    "This site uses cookies to improve your experience. Accept all cookies",
    "Subscribe to our newsletter for the latest updates",
    "Related articles", "Most read this week",
    "Copyright 2024 Example News Group. All rights reserved.",
    "Privacy Policy | Terms of Use | Cookie Policy",
    "Share on Facebook", "Share on Twitter",
]


def html_page(title: str, paragraphs: list[str], site: int = 0, rng: random.Random | None = None) -> str:
    """A page around the article: navigation, cookie banner, sidebar and footer (the boilerplate a main-
    text extractor must leave out)."""
    rng = rng or random.Random(site)
    nav = "".join(f'<li><a href="/{n.lower().replace(" ", "-")}">{n}</a></li>' for n in NAV)
    related = "".join(f'<li><a href="/story/{rng.randint(1, 99999)}">{rng.choice(ADJS).capitalize()} '
                      f'{rng.choice(NOUNS)} {rng.choice(VERBS)}</a></li>' for _ in range(5))
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    return (f"<!DOCTYPE html><html><head><title>{title} | Example News {site}</title>"
            f'<meta charset="utf-8"></head><body>'
            f'<div class="cookie-banner">{BOILERPLATE_LINES[0]}</div>'
            f'<header><div class="logo">Example News {site}</div><nav><ul>{nav}</ul></nav></header>'
            f'<main><article><h1>{title}</h1><p class="byline">By {rng.choice(PEOPLE)}</p>{body}</article></main>'
            f'<aside><h3>{BOILERPLATE_LINES[2]}</h3><ul>{related}</ul><h3>{BOILERPLATE_LINES[3]}</h3></aside>'
            f'<footer><p>{BOILERPLATE_LINES[1]}</p><p>{BOILERPLATE_LINES[6]} · {BOILERPLATE_LINES[7]}</p>'
            f"<p>{BOILERPLATE_LINES[4]}</p><p>{BOILERPLATE_LINES[5]}</p></footer></body></html>")


def luhn_digit(digits: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def card_number(rng: random.Random, valid: bool) -> str:
    if rng.random() < 0.25:  # American Express, 15 digits printed 4-6-5
        body = "37" + "".join(str(rng.randint(0, 9)) for _ in range(12))
        number = body + luhn_digit(body)
        if not valid:
            number = number[:-1] + str((int(number[-1]) + 1) % 10)
        return f"{number[:4]} {number[4:10]} {number[10:]}"
    body = rng.choice("45") + "".join(str(rng.randint(0, 9)) for _ in range(14))
    number = body + luhn_digit(body)
    if not valid:
        number = number[:-1] + str((int(number[-1]) + 1) % 10)
    sep = rng.choice([" ", "-", ""])
    return sep.join(number[i:i + 4] for i in range(0, 16, 4))


def phone_number(rng: random.Random) -> str:
    a, b, c = rng.randint(201, 989), rng.randint(200, 999), rng.randint(1000, 9999)
    return rng.choice([f"+1 ({a}) {b}-{c}", f"({a}) {b}-{c}", f"{a}-{b}-{c}", f"{a}.{b}.{c}",
                       f"+44 20 {rng.randint(7000, 8999)} {rng.randint(1000, 9999)}",
                       f"+49 30 {rng.randint(100, 999)} {rng.randint(10000, 99999)}"])


def ip_address(rng: random.Random) -> str:
    if rng.random() < 0.3:
        return f"2001:db8:{rng.randint(1, 0xffff):x}::{rng.randint(1, 0xffff):x}:{rng.randint(1, 0xffff):x}"
    return f"{rng.randint(11, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def email(rng: random.Random) -> str:
    first, last = rng.choice(PEOPLE).lower().split()
    return f"{first}.{last}{rng.randint(1, 99)}@{rng.choice(['example.org', 'mail.example.com', 'news.example.net'])}"


def pii_sentences(rng: random.Random) -> tuple[list[str], list[tuple[str, str]]]:
    """Sentences carrying PII (with the values, the ground truth) and decoys that are not PII."""
    spans: list[tuple[str, str]] = []
    out = []
    for _ in range(rng.randint(2, 4)):
        kind = rng.choice(["email", "phone", "ip_address", "credit_card"])
        value = {"email": email, "phone": phone_number, "ip_address": ip_address,
                 "credit_card": lambda r: card_number(r, True)}[kind](rng)
        spans.append((kind, value))
        out.append({"email": f"Readers can write to {rng.choice(PEOPLE)} at {value} with their questions.",
                    "phone": f"For tickets, call the box office on {value} before noon.",
                    "ip_address": f"The attack on the council website came from the address {value}, police said.",
                    "credit_card": f"The leaked receipt showed the card number {value} in full."}[kind])
    decoys = [f"The project will cost ${rng.randint(2, 90)},{rng.randint(100, 999)},000 over {rng.randint(2, 9)} years.",
              f"The meeting took place on {rng.randint(2000, 2023)}-{rng.randint(10, 12)}-{rng.randint(10, 28)} in the town hall.",
              f"The book, ISBN 978-{rng.randint(1, 9)}-{rng.randint(10, 99)}-{rng.randint(100000, 999999)}-{rng.randint(0, 9)}, sold out.",
              f"The app was updated to version {rng.randint(1, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 9)} this week.",
              f"Order number {card_number(rng, False)} was cancelled, the shop said.",
              f"Between {rng.randint(1950, 1980)} and {rng.randint(1990, 2010)} the population grew to {rng.randint(10, 99)},{rng.randint(100, 999)}."]
    out += rng.sample(decoys, 3)
    return out, spans


KEYWORDS = """cheap flights best price buy now discount hotels free shipping online casino payday loans
replica watches weight loss pills crypto bonus top deals lowest price sale coupon promo code""".split()


def spam_keywords(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(15, 30)):
        lines.append(" ".join(rng.choice(KEYWORDS) for _ in range(rng.randint(3, 8))))
    return "\n".join(lines)


def spam_repetition(rng: random.Random) -> str:
    ad = (f"Click here to win a free {rng.choice(['phone', 'holiday', 'car', 'laptop'])} and claim your "
          f"{rng.choice(['prize', 'reward', 'bonus'])} today, offer ends soon!")
    intro = _sentence(rng)
    return "\n".join([intro] + [ad] * rng.randint(12, 30))


def boilerplate_page(rng: random.Random) -> str:
    items = [f"- {rng.choice(ADJS).capitalize()} {rng.choice(NOUNS)}" for _ in range(rng.randint(20, 40))]
    return "\n".join(NAV + items + BOILERPLATE_LINES[1:6])


def code_page(rng: random.Random) -> str:
    intro = " ".join(_sentence(rng) for _ in range(4))
    fn = rng.choice(["count_items", "load_config", "parse_line", "merge_lists"])
    code = (f"function {fn}(items) {{\n  let total = 0;\n  for (const item of items) {{\n"
            f"    total += item.{rng.choice(['size', 'value', 'count'])};\n  }}\n  return total;\n}}")
    outro = " ".join(_sentence(rng) for _ in range(3))
    return f"{intro}\n\nHere is the {fn} function we will use in the next part of this tutorial.\n\n{code}\n\n{outro}"


LOREM = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et "
         "dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi ut aliquip "
         "ex ea commodo consequat. Duis aute irure dolor in reprehenderit in voluptate velit esse cillum dolore.")


def lorem_page(rng: random.Random) -> str:
    return "\n\n".join([_sentence(rng)] + [LOREM] * rng.randint(2, 5))


NSFW = ["Watch free porn videos and live sex cam shows with the hottest camgirls online tonight.",
        "Our xxx site has thousands of hardcore porn clips, updated daily for adult members only.",
        "Join the sex chat now and meet sluts in your area who want a blowjob and a threesome.",
        "The best porno tube on the internet, with gangbang and bdsm videos streaming in high definition.",
        "Find horny singles and amateur sex video galleries, all free and without registration."]


def nsfw_page(rng: random.Random) -> str:
    parts = rng.sample(NSFW, 4) + [_sentence(rng) for _ in range(2)]
    rng.shuffle(parts)
    return " ".join(parts)


FOREIGN = {
    "fr": ["Le conseil municipal a approuvé le nouveau projet de pont après des mois de débat.",
           "Les habitants du quartier ont exprimé leur inquiétude au sujet de la circulation.",
           "Selon le maire, les travaux commenceront au printemps et dureront deux ans.",
           "La bibliothèque de la ville accueille chaque année des milliers de visiteurs.",
           "Les chercheurs de l'université ont publié une étude sur la qualité de l'eau de la rivière.",
           "Le festival de musique attire des artistes venus de toute l'Europe pendant l'été.",
           "Il faudra encore beaucoup de temps avant que le marché retrouve son activité normale."],
    "de": ["Der Gemeinderat hat den Bau der neuen Brücke nach langer Diskussion genehmigt.",
           "Die Bewohner des Viertels machen sich Sorgen über den zunehmenden Verkehr.",
           "Nach Angaben des Bürgermeisters beginnen die Arbeiten im Frühling und dauern zwei Jahre.",
           "Die Stadtbibliothek empfängt jedes Jahr mehrere tausend Besucher aus der Region.",
           "Forscher der Universität haben eine Studie über die Wasserqualität des Flusses veröffentlicht.",
           "Das Musikfestival zieht im Sommer Künstler aus ganz Europa in die kleine Stadt.",
           "Es wird noch lange dauern, bis sich der Markt wieder vollständig erholt hat."],
    "es": ["El ayuntamiento aprobó el nuevo proyecto del puente después de meses de debate.",
           "Los vecinos del barrio expresaron su preocupación por el aumento del tráfico.",
           "Según el alcalde, las obras comenzarán en primavera y durarán dos años.",
           "La biblioteca de la ciudad recibe cada año a miles de visitantes de toda la región.",
           "Los investigadores de la universidad publicaron un estudio sobre la calidad del agua del río.",
           "El festival de música atrae a artistas de toda Europa durante el verano.",
           "Todavía pasará mucho tiempo antes de que el mercado recupere su actividad normal."],
}


def foreign_page(rng: random.Random) -> str:
    lang = rng.choice(sorted(FOREIGN))
    return "\n\n".join(" ".join(rng.sample(FOREIGN[lang], 4)) for _ in range(rng.randint(3, 5)))


@dataclass
class WebDoc:
    id: str
    label: str
    text: str  # the page's main text (what a perfect extractor returns)
    html: str
    url: str
    pii: list[tuple[str, str]] = field(default_factory=list)
    decoys: list[str] = field(default_factory=list)
    dup_of: str | None = None


JUNK = {"spam_keywords": spam_keywords, "spam_repetition": spam_repetition, "boilerplate": boilerplate_page,
        "code": code_page, "lorem": lorem_page, "nsfw": nsfw_page, "non_english": foreign_page}
KEEP_LABELS = ("clean", "pii")


def _near_copy(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    for i in rng.sample(range(len(words)), max(1, len(words) // 100)):
        words[i] = rng.choice(NOUNS)
    return " ".join(words) + f"\n\nThis article was updated on {rng.choice(TIMES)} with a correction."


def _text_page(text: str, site: int, rng: random.Random) -> str:
    paras = [p for p in text.split("\n\n")]
    body = "".join("<p>" + p.replace("\n", "<br>") + "</p>" for p in paras)
    return f"<html><head><title>Page {site}</title></head><body><main>{body}</main></body></html>"


def generate(seed: int = 0, clean: int = 120, per_junk: int = 20, exact_dups: int = 20, near_dups: int = 20,
             pii: int = 20) -> list[WebDoc]:
    """The corpus, in a deterministic shuffled order (duplicates always after their original)."""
    rng = random.Random(seed)
    docs: list[WebDoc] = []
    originals: list[WebDoc] = []
    for i in range(clean + pii):
        title, paras = article(rng)
        label = "clean"
        spans, decoys = [], []
        if i >= clean:
            label = "pii"
            extra, spans = pii_sentences(rng)
            decoys = extra[len(spans):]
            for sentence in extra:
                j = rng.randrange(len(paras))
                paras[j] = paras[j] + " " + sentence
        text = title + "\n\n" + "\n\n".join(paras)
        doc = WebDoc(f"s{seed}-a{i}", label, text, html_page(title, paras, site=i % 7, rng=rng),
                     f"https://news{i % 7}.example.com/{i}", spans, decoys)
        docs.append(doc)
        if label == "clean":
            originals.append(doc)
    for kind, make in JUNK.items():
        for i in range(per_junk):
            text = make(rng)
            docs.append(WebDoc(f"s{seed}-{kind}{i}", kind, text, _text_page(text, i, rng),
                               f"https://junk.example.com/{kind}/{i}"))
    rng.shuffle(docs)
    for i, orig in enumerate(rng.sample(originals, exact_dups)):
        title, *paras = orig.text.split("\n\n")
        docs.append(WebDoc(f"s{seed}-x{i}", "exact_dup", orig.text, html_page(title, paras, site=9, rng=rng),
                           f"https://mirror.example.com/{i}", dup_of=orig.id))
    for i, orig in enumerate(rng.sample(originals, near_dups)):
        text = _near_copy(orig.text, rng)
        title, *paras = text.split("\n\n")
        docs.append(WebDoc(f"s{seed}-n{i}", "near_dup", text, html_page(title, paras, site=8, rng=rng),
                           f"https://copy.example.com/{i}", dup_of=orig.id))
    return docs


def write_jsonl(docs: list[WebDoc], path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"id": d.id, "text": d.text, "url": d.url}) + "\n")


def write_warc(docs: list[WebDoc], path) -> None:
    """A gzipped WARC of HTTP responses, one per page, as a crawler writes it."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        for d in docs:
            payload = d.html.encode("utf-8")
            http = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                               ("Content-Length", str(len(payload)))], protocol="HTTP/1.1")
            record = writer.create_warc_record(d.url, "response", payload=io.BytesIO(payload), http_headers=http,
                                               warc_headers_dict={"WARC-Record-ID": f"<urn:llmkit:{d.id}>"})
            writer.write_record(record)
