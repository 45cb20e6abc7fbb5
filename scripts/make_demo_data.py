#!/usr/bin/env python3
"""Generate a synthetic, labelled data set of customer support tickets.

Two modes: ticket classification (the default: body, queue) and, with
``--generation``, field extraction for a decoder (prompt, completion: JSON).

What it generates (default mode)
    A UTF-8 TSV file with the header line ``body<TAB>queue`` and one ticket a
    line.  ``body`` is the free text of a customer e-mail; ``queue`` is the team
    it should be routed to, one of six classes with a deliberately unbalanced
    split (the real world is never balanced):

        billing 25 %, shipping 20 %, technical 20 %, account 15 %,
        returns 12 %, sales 8 %

    Tickets are built from many hand-written templates per queue (at least 30
    each) filled with slot values (products, amounts, dates, order numbers,
    names, cities, devices, plans, ...), then dressed with optional greetings,
    extra detail sentences, sign-offs, politeness variants, mixed case,
    punctuation variety, rare emoji, a few accented / non-English words and
    occasional typos.  Lengths range from about 5 to about 80 words.

Why
    The peft quick start loads this file into a table and fine-tunes
    all-MiniLM-L6-v2 (with a classification head) inside PostgreSQL.  A demo
    needs data that anyone can regenerate offline, without licences or
    downloads, and that behaves like real data: not trivially separable, so
    that training visibly improves accuracy.  Two kinds of difficulty are
    built in on purpose:

    * ambiguity: about 10 % of tickets also mention the vocabulary of a second
      queue (a return that talks about the refund, a shipping question that
      mentions a charge); a few tickets are vague and say almost nothing;
    * label noise: a ``--noise`` fraction of rows (default 0.05) get a random
      wrong queue, as happens when agents mis-route tickets.

    A bag-of-words classifier reaches roughly 85-92 % held-out accuracy on the
    default output; 100 % is impossible by construction.

How to regenerate
    The output depends only on the arguments (Python 3 standard library only,
    no network, identical bytes on every machine for the same arguments):

        python3 scripts/make_demo_data.py tickets.tsv                # 6000 rows, seed 2026
        python3 scripts/make_demo_data.py tickets.tsv --rows 20000 --seed 7 --noise 0.05
        python3 scripts/make_demo_data.py - | head                     # "-" writes to stdout

    Load it with psql, for example:

        CREATE TABLE tickets (body text, queue text);
        \\copy tickets FROM 'tickets.tsv' WITH (FORMAT csv, DELIMITER E'\\t', HEADER true)

    (Fields never contain tabs, newlines, double quotes or backslashes, so the
    file reads the same as PostgreSQL text or CSV format.)  A short summary
    (rows per queue, mean words) is printed to stderr.

Generation mode (--generation)
    What: a TSV with the header ``prompt<TAB>completion`` (2,000 rows by
    default, the same queue shares).  ``prompt`` is a short instruction and a
    support ticket; ``completion`` is one line of compact JSON, keys always in
    this order and no spaces outside values:

        Reply with JSON {"queue","order","product"} for this ticket (queue:
        billing shipping technical account returns sales; null if absent):
        Hi, my order #483921 still hasn't arrived and it's been 5 days.
        ->  {"queue":"shipping","order":"483921","product":null}

    ``queue`` is the ticket's queue, ``order`` the order number it mentions
    without "#" or "no. " ("483921", "ORD-48213", "A4821377") or null,
    ``product`` the catalogue product it names, as written ("robot vacuum";
    the customer's own phone or computer is not a product) or null.  About
    45 % of rows name an order and 45 % a product, drawn independently.

    Why: the quick start's second job trains a LoRA adapter on
    SmolLM2-135M-Instruct with these rows (loss on the completion) and
    compares exact match on held-out rows before and after.  Exact match of
    the whole line is attainable by construction: tickets use only their own
    queue's templates (no second-queue wording, no vague or rambling
    tickets, no label noise), typos never touch an order number or product
    name, a ticket names at most one order and one product, each value
    appears verbatim in the ticket, and no prompt occurs twice (held-out rows
    are never copies of training rows).  Tickets are short (4 to 40 words,
    median 15) and the instruction is 28 tokens, so a prompt is about 50
    SmolLM2 tokens: training time on the CPU scales with tokens.

    How:

        python3 scripts/make_demo_data.py ticket_json.tsv --generation              # 2000 rows, seed 2026
        python3 scripts/make_demo_data.py ticket_json.tsv --generation --rows 5000 --seed 7

    The completions contain double quotes, so load the file in PostgreSQL's
    text format (as the quick start does), not CSV:

        CREATE TABLE ticket_json (id serial, prompt text, completion text);
        \\copy ticket_json (prompt, completion) FROM 'ticket_json.tsv' WITH (FORMAT text, HEADER true)

    ``--noise`` is refused in this mode.  The summary on stderr gives rows per
    queue, how many rows name an order and a product, and ticket lengths.
"""

import argparse
import json
import random
import re
import sys
import unicodedata

# ---------------------------------------------------------------------------
# Classes and their share of the data set.
# ---------------------------------------------------------------------------

QUEUE_SHARES = [
    ("billing", 0.25),
    ("shipping", 0.20),
    ("technical", 0.20),
    ("account", 0.15),
    ("returns", 0.12),
    ("sales", 0.08),
]
QUEUES = [name for name, _ in QUEUE_SHARES]

# Probabilities of the dressing steps.  Kept here so the difficulty of the
# task can be tuned in one place.
P_CROSS_MENTION = 0.115  # second-queue wording (terse tickets have none, so ~10 % overall)
P_CROSS_FULL = 0.50      # ... of which this share is a whole second issue
P_VAGUE = 0.07           # replace the core sentence by an uninformative one
P_TERSE = 0.12           # short, note-like ticket with no dressing at all
P_RAMBLING = 0.06        # long ticket with background story and extra detail
P_OPENER = 0.65
P_DETAIL = 0.45          # one queue-specific detail sentence
P_SECOND_DETAIL = 0.20   # ... and sometimes another one
P_GENERIC = 0.30         # a sentence that carries no queue signal
P_CLOSER = 0.60
P_SIGNATURE = 0.30
P_TYPO_PER_WORD = 0.015
P_LOWERCASE = 0.08       # whole ticket typed in lower case
P_SHOUT_WORD = 0.03      # one word in CAPITALS for emphasis
P_EMOJI = 0.015
P_EXCLAIM = 0.07         # "!", "!!", "!!!" or "..." instead of "."
P_NO_STOP = 0.05         # final full stop left out
MAX_WORDS = 80           # longer drafts are redrawn

# Which other queues a ticket plausibly also talks about; used for the
# cross-mention sentences so that the ambiguity is realistic.
RELATED_QUEUES = {
    "billing": ["returns", "account", "sales", "shipping"],
    "shipping": ["returns", "billing", "technical"],
    "technical": ["account", "returns", "sales"],
    "account": ["billing", "technical"],
    "returns": ["billing", "shipping", "technical"],
    "sales": ["billing", "technical", "shipping"],
}

# ---------------------------------------------------------------------------
# Slot values.  Accented names and places are included on purpose so that the
# tokenizer sees non-ASCII text.
# ---------------------------------------------------------------------------

FIRST_NAMES = [
    "Anna", "Ben", "Carlos", "Chloé", "David", "Elena", "Fatima", "George",
    "Hannah", "Ibrahim", "Jana", "José", "Kenji", "Laura", "Marco", "Nadia",
    "Olivia", "Priya", "Quentin", "Renée", "Sofia", "Tom", "Uma", "Viktor",
    "Wei", "Yusuf", "Zoë", "Björn", "Amélie", "François", "Jürgen", "Søren",
    "Mike", "Sarah", "Emma", "Lucas", "Grace", "Omar", "Ines", "Mateo",
]
LAST_NAMES = [
    "Smith", "Müller", "García", "Rossi", "Nguyen", "Kowalski", "Dubois",
    "Jensen", "Okafor", "Tanaka", "Silva", "O'Brien", "Novak", "Larsen",
    "Fernández", "Schmidt", "Brown", "Patel", "Moreau", "Ivanova",
]
CITIES = [
    "Zürich", "Montréal", "São Paulo", "Malmö", "Kraków", "Köln", "Bogotá",
    "Reykjavík", "Austin", "Leeds", "Lyon", "Osaka", "Toronto", "Melbourne",
    "Denver", "Dublin", "Chicago", "Madrid", "Oslo", "Rotterdam", "Seattle",
    "Manchester", "Genève", "Brno",
]
COUNTRIES = [
    "Canada", "Germany", "Switzerland", "Brazil", "Japan", "Australia",
    "Norway", "Mexico", "Ireland", "Poland", "Iceland", "France", "Spain",
    "the UK", "New Zealand", "Sweden", "Austria", "Portugal",
]
PRODUCTS = [
    "wireless earbuds", "smart thermostat", "4K monitor", "espresso machine",
    "standing desk", "robot vacuum", "fitness tracker", "Bluetooth speaker",
    "gaming keyboard", "e-reader", "security camera", "smart doorbell",
    "laptop stand", "noise-cancelling headphones", "air purifier",
    "electric kettle", "wifi router", "webcam", "portable charger",
    "smartwatch", "tablet", "blender", "coffee grinder", "desk lamp",
    "mesh router", "baby monitor", "smart plug", "drone", "dashcam",
]
PHYSICAL_GOODS = PRODUCTS + [
    "winter jacket", "running shoes", "hiking backpack", "yoga mat",
    "duvet cover", "office chair", "cast iron pan", "suitcase",
]
AUDIO_GEAR = ["wireless earbuds", "noise-cancelling headphones",
              "Bluetooth speaker", "smartwatch", "fitness tracker", "headset"]
DEVICES = [
    "iPhone 14", "iPhone 15", "Pixel 8", "Galaxy S23", "iPad", "MacBook Air",
    "Windows 11 laptop", "Chromebook", "Android tablet", "Fire TV stick",
    "Linux desktop", "Surface Pro", "work PC", "old iPhone",
]
OPERATING_SYSTEMS = [
    "Windows 11", "Windows 10", "macOS Sonoma", "Ubuntu 22.04", "iOS 17",
    "Android 14", "ChromeOS", "Debian",
]
BROWSERS = ["Chrome", "Firefox", "Safari", "Edge", "Brave"]
PLANS = ["Basic", "Starter", "Pro", "Plus", "Premium", "Team", "Business",
         "Enterprise", "Family"]
CARRIERS = ["UPS", "FedEx", "DHL", "USPS", "Royal Mail", "Canada Post",
            "La Poste", "PostNL", "DPD", "Hermes", "Swiss Post"]
INTEGRATIONS = ["Slack", "Salesforce", "Shopify", "Google Drive", "Zapier",
                "HubSpot", "QuickBooks", "Dropbox", "Microsoft Teams"]
SSO_PROVIDERS = ["Okta", "Google", "Azure AD", "OneLogin", "Microsoft"]
PAYMENT_METHODS = ["PayPal", "bank transfer", "Apple Pay", "Google Pay",
                   "SEPA direct debit", "invoice", "Klarna", "wire transfer"]
CARDS = ["Visa", "Mastercard", "Amex", "debit card", "credit card",
         "company card"]
COMPANIES = ["Acme GmbH", "Nordlicht AB", "Café Lumière SARL", "Blue Fern Ltd",
             "Riverside Dental", "Kowalski & Sons", "Pixelworks Inc",
             "Müller Logistik", "Green Leaf Co-op", "Sunrise Bakery"]
COLOURS = ["black", "white", "navy", "red", "sage green", "grey", "beige"]
SIZES = ["S", "M", "L", "XL", "size 42", "size 9", "size 38", "medium", "large"]
COUPONS = ["SPRING20", "WELCOME10", "SAVE15", "VIP25", "BF2025", "FREESHIP",
           "HELLO5", "STUDENT10"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July",
          "August", "September", "October", "November", "December"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday",
            "Saturday", "Sunday"]
EMOJI = ["🙂", "😡", "🙏", "📦", "😞", "👍", "😅", "🤔", "💳", "🔥"]


def slot_amount(rng):
    """Return a money amount in one of several currencies and notations."""
    value = rng.choice([rng.randint(5, 99), rng.randint(10, 400),
                        rng.randint(100, 2500)])
    cents = rng.choice(["", ".00", ".99", ".49", ".%02d" % rng.randint(0, 99)])
    style = rng.randrange(6)
    if style == 0:
        return "$%d%s" % (value, cents)
    if style == 1:
        return "€%d%s" % (value, cents)
    if style == 2:
        return "£%d%s" % (value, cents)
    if style == 3:
        return "CHF %d%s" % (value, cents)
    if style == 4:
        return "%d%s USD" % (value, cents)
    return "%d euros" % value


def slot_date(rng):
    """Return a date written the way customers write dates."""
    style = rng.randrange(8)
    day = rng.randint(1, 28)
    month = rng.choice(MONTHS)
    if style == 0:
        return "%s %d" % (month, day)
    if style == 1:
        return "%d %s" % (day, month)
    if style == 2:
        return "%d/%d" % (rng.randint(1, 12), day)
    if style == 3:
        return "2025-%02d-%02d" % (rng.randint(1, 12), day)
    if style == 4:
        return "last " + rng.choice(WEEKDAYS)
    if style == 5:
        return rng.choice(["yesterday", "today", "this morning",
                           "last week", "the weekend"])
    if style == 6:
        return "%s ago" % rng.choice(["two days", "a week", "3 weeks",
                                       "10 days", "a month"])
    return "the %d%s" % (day, {1: "st", 2: "nd", 3: "rd", 21: "st",
                               22: "nd", 23: "rd"}.get(day, "th"))


def slot_future_date(rng):
    """Return a date that makes sense for something still to come."""
    style = rng.randrange(4)
    if style == 0:
        return "next " + rng.choice(WEEKDAYS)
    if style == 1:
        return "%s %d" % (rng.choice(MONTHS), rng.randint(1, 28))
    if style == 2:
        return "the end of " + rng.choice(["the week", "the month"] + MONTHS)
    return "the %dth" % rng.randint(4, 20)


def slot_order(rng):
    """Return an order number in one of several shop formats."""
    style = rng.randrange(4)
    if style == 0:
        return "#%d" % rng.randint(100000, 999999)
    if style == 1:
        return "ORD-%d" % rng.randint(10000, 99999)
    if style == 2:
        return "A%d" % rng.randint(1000000, 9999999)
    return "no. %d" % rng.randint(10000, 99999)


def slot_tracking(rng):
    """Return a parcel tracking number (UPS-, postal- or digit-style)."""
    alnum = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"
    style = rng.randrange(3)
    if style == 0:
        return "1Z" + "".join(rng.choice(alnum) for _ in range(16))
    if style == 1:
        return "%s%09d%s" % (rng.choice(["LX", "RR", "CP", "EE"]),
                             rng.randint(0, 999999999),
                             rng.choice(["DE", "CH", "GB", "FR", "US"]))
    return "%012d" % rng.randint(0, 10 ** 12 - 1)


def slot_error(rng):
    """Return an error code as an application or OS would print it."""
    style = rng.randrange(5)
    if style == 0:
        return "E%03d" % rng.randint(1, 999)
    if style == 1:
        return "0x8007%04X" % rng.randint(0, 0xFFFF)
    if style == 2:
        return "ERR_" + rng.choice(["TIMEOUT", "SYNC_FAILED", "AUTH", "NETWORK",
                                    "UNKNOWN", "QUOTA"])
    if style == 3:
        return "HTTP %d" % rng.choice([500, 502, 503, 504, 429, 403])
    return "code %d" % rng.randint(10, 9999)


def ascii_fold(text):
    """Strip accents (Zoë -> Zoe) so generated e-mail addresses stay ASCII."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if c.isascii() and c.isalnum())


def slot_email(rng):
    """Return a plausible e-mail address built from a random name."""
    first = ascii_fold(rng.choice(FIRST_NAMES)).lower()
    last = ascii_fold(rng.choice(LAST_NAMES)).lower()
    domain = rng.choice(["example.com", "mail.example.org", "example.net",
                         "company.example"])
    sep = rng.choice([".", "_", ""])
    return "%s%s%s@%s" % (first, sep, last, domain)


# Slot name -> function(rng) giving one value.  Templates name slots as
# {slot}; a slot used twice in one template gets independent values, which is
# what we want for e.g. "{amount} ... {amount}".
SLOTS = {
    "name": lambda r: r.choice(FIRST_NAMES),
    "fullname": lambda r: "%s %s" % (r.choice(FIRST_NAMES), r.choice(LAST_NAMES)),
    "city": lambda r: r.choice(CITIES),
    "country": lambda r: r.choice(COUNTRIES),
    "product": lambda r: r.choice(PRODUCTS),
    "item": lambda r: r.choice(PHYSICAL_GOODS),
    "device": lambda r: r.choice(DEVICES),
    "audio": lambda r: r.choice(AUDIO_GEAR),
    "os": lambda r: r.choice(OPERATING_SYSTEMS),
    "browser": lambda r: r.choice(BROWSERS),
    "plan": lambda r: r.choice(PLANS),
    "carrier": lambda r: r.choice(CARRIERS),
    "integration": lambda r: r.choice(INTEGRATIONS),
    "sso": lambda r: r.choice(SSO_PROVIDERS),
    "paymethod": lambda r: r.choice(PAYMENT_METHODS),
    "card": lambda r: r.choice(CARDS),
    "company": lambda r: r.choice(COMPANIES),
    "colour": lambda r: r.choice(COLOURS),
    "size": lambda r: r.choice(SIZES),
    "coupon": lambda r: r.choice(COUPONS),
    "month": lambda r: r.choice(MONTHS),
    "amount": slot_amount,
    "date": slot_date,
    "future": slot_future_date,
    "order": slot_order,
    "tracking": slot_tracking,
    "error": slot_error,
    "email": slot_email,
    "days": lambda r: str(r.choice([2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 21])),
    "months": lambda r: str(r.randint(2, 18)),
    "count": lambda r: str(r.choice([3, 5, 10, 12, 20, 25, 40, 50, 100, 150,
                                     200, 250, 500])),
    "year": lambda r: str(r.randint(2012, 2024)),
    "version": lambda r: "%d.%d.%d" % (r.randint(1, 9), r.randint(0, 20),
                                       r.randint(0, 9)),
    "percent": lambda r: "%d%%" % r.randint(5, 99),
    "filesize": lambda r: "%d MB" % r.choice([5, 10, 20, 25, 50, 100]),
    "invoice": lambda r: "INV-%d-%04d" % (r.randint(2023, 2025),
                                          r.randint(1, 9999)),
    "rma": lambda r: "RMA%d" % r.randint(100000, 999999),
    "username": lambda r: ascii_fold(r.choice(FIRST_NAMES)).lower()
                          + str(r.randint(1, 99)),
}

# ---------------------------------------------------------------------------
# Templates.  CORE sentences state the problem and carry most of the signal;
# DETAIL sentences add queue-specific colour; TERSE are short note-like
# tickets; CROSS are clauses that borrow a queue's vocabulary and are appended
# to tickets of *other* queues to create ambiguity.
# ---------------------------------------------------------------------------

CORE = {
    "billing": [
        "I was charged twice for order {order}.",
        "My card was billed {amount} but the price was {amount}.",
        "Can you send me an invoice for my payment on {date}?",
        "There is a charge of {amount} on my statement that I don't recognise.",
        "My payment keeps getting declined even though my {card} is valid.",
        "Why did my monthly bill go up to {amount}?",
        "I need a VAT invoice with our company name {company} on it.",
        "The receipt for order {order} shows the wrong billing address.",
        "I was still charged for the {plan} plan after I downgraded.",
        "Please update the credit card on file, the old one expired.",
        "I got charged a late fee of {amount} but I paid on time.",
        "Can I pay by {paymethod} instead of card?",
        "The invoice total doesn't match the price on the quote we signed.",
        "I see a pending authorisation of {amount} that never dropped off.",
        "You billed me in dollars instead of my local currency.",
        "Please refund the duplicate charge from {date}.",
        "Our finance team needs copies of all invoices from {month}.",
        "The autopay failed and now my account shows an overdue balance.",
        "I was charged sales tax but our organisation is tax exempt.",
        "My bank says the payment of {amount} went through but your system says unpaid.",
        "Please explain the line item called service fee on my last bill.",
        "Can I switch from monthly to annual billing?",
        "The coupon {coupon} was not applied and I paid full price.",
        "I cancelled my subscription but still got billed {amount} on {date}.",
        "How do I download my past invoices as PDF?",
        "Invoice {invoice} has the wrong purchase order number.",
        "The gift card balance wasn't deducted properly at checkout.",
        "Payment failed with error {error} when I tried to pay invoice {invoice}.",
        "I want to dispute a charge on my {card} from {date}.",
        "I was overcharged by {amount} on my last statement.",
        "The subscription renewed automatically and charged me {amount} without any reminder.",
        "Please change the billing email for invoices to {email}.",
        "My {card} was charged {amount} three times for one purchase.",
        "Could you split the invoice between two cost centres?",
    ],
    "shipping": [
        "My order {order} still hasn't arrived and it's been {days} days.",
        "Tracking number {tracking} hasn't updated since {date}.",
        "Can I change the delivery address for order {order} to {city}?",
        "The {carrier} driver marked it delivered but nothing is at my door.",
        "My package arrived with the box completely crushed.",
        "Do you ship to {country}?",
        "How long does express delivery to {city} take?",
        "Only part of my order arrived, the {item} is missing from the parcel.",
        "My package is stuck in customs in {city}.",
        "Can I pick up my order from a depot instead of having it delivered?",
        "I paid for next-day delivery but it took a week.",
        "The estimated delivery date keeps getting pushed back.",
        "My parcel was sent back to the warehouse, can you ship it again?",
        "Please hold my shipment, I'm away until {future}.",
        "Which courier do you use for deliveries to {country}?",
        "The tracking page has said label created for {days} days now.",
        "Can you ship the {item} first and send the rest later?",
        "The courier says delivery was attempted but I was home all day.",
        "Is there a way to schedule the delivery for a Saturday?",
        "My order shows as shipped but there's no tracking link in the email.",
        "The parcel was left with a neighbour I don't even know.",
        "What are the shipping fees for international delivery to {country}?",
        "I need order {order} delivered before {future}, it's a gift.",
        "The shipping label on my parcel has my old address on it.",
        "{carrier} says my parcel is lost, tracking shows an exception.",
        "Why was my order sent by standard post instead of {carrier}?",
        "Has order {order} left the warehouse yet?",
        "Can I add a note for the driver? The buzzer at my building is broken.",
        "My package went to {city} instead of {city}.",
        "The delivery window on {date} was missed and nobody called.",
        "Can you upgrade my shipping to express? I need it by {future}.",
        "The courier left my parcel outside in the rain.",
        "Is it possible to deliver to a parcel locker in {city}?",
        "The shipment was split and I only got one of the two boxes.",
    ],
    "technical": [
        "The app crashes every time I open it on my {device}.",
        "I get error {error} when I try to sync.",
        "The {product} won't connect to wifi after the firmware update.",
        "The website is extremely slow and pages keep timing out.",
        "Bluetooth pairing fails between my {audio} and my {device}.",
        "After updating to version {version} the screen stays black.",
        "The export to CSV button does nothing when I click it.",
        "Push notifications stopped working on my {device}.",
        "The {product} keeps rebooting randomly.",
        "The battery on the {product} drains in about an hour.",
        "I can't install the desktop app on {os}, the installer hangs.",
        "The API returns {error} for every request since {date}.",
        "Video playback stutters and freezes on my {device}.",
        "The touchscreen on my {device} is unresponsive in one corner.",
        "My data isn't syncing between the {device} and the web app.",
        "The webhook stopped firing after we changed the endpoint URL.",
        "I get a certificate error when connecting to the server.",
        "The {product} has a blinking red light and won't turn on.",
        "Search returns no results even for things I know are there.",
        "The integration with {integration} has been broken since this morning.",
        "Audio keeps cutting out on calls with the {audio}.",
        "How do I reset the {product} to factory settings?",
        "The dashboard charts don't load, I only see a spinner.",
        "The firmware update stopped at {percent} and now the device is stuck.",
        "The app freezes when I upload photos bigger than {filesize}.",
        "In dark mode the text is unreadable on {device}.",
        "The printer driver isn't recognised by {os}.",
        "The {product} overheats after a few minutes of use.",
        "Scheduled reports fail with a timeout error.",
        "The page is just a blank white screen in {browser}.",
        "The mobile app shows {error} right after the splash screen.",
        "The {product} disconnects from the app every few minutes.",
        "File uploads fail at {percent} with a network error.",
        "The camera feed from the {product} is blurry and lags.",
    ],
    "account": [
        "I can't log in, it says my password is incorrect.",
        "Please reset my password, the reset email never arrives.",
        "How do I change the email address on my account to {email}?",
        "I want to delete my account and all of my data.",
        "My account got locked after too many login attempts.",
        "I think someone else accessed my account, I see logins from {city}.",
        "How do I turn on two-factor authentication?",
        "I lost my phone and now I can't get the 2FA code.",
        "Can you merge my two accounts into one?",
        "Please change the username on my profile to {username}.",
        "I need to add a new user to our team account.",
        "How do I transfer ownership of the account to {fullname}?",
        "The verification link in the sign-up email has expired.",
        "I never signed up but I'm getting emails for an account under {email}.",
        "Please update the phone number on my profile.",
        "How can I download a copy of my personal data?",
        "My account shows as suspended and I don't know why.",
        "I can't remove an old admin from our workspace.",
        "Single sign-on with {sso} stopped letting me in.",
        "I forgot which email address I used to register.",
        "Please change the name on my profile, I recently got married.",
        "How do I stop marketing emails but keep my account?",
        "My security question answer isn't being accepted.",
        "Please reactivate my old account from {year}.",
        "I want to change my account from personal to business.",
        "Someone changed my password without my permission.",
        "My profile settings reset every time I log out.",
        "How do I close my account permanently?",
        "I'm not receiving the login code by SMS.",
        "Can I link two email addresses to one login?",
        "The login page says my account does not exist but I've used it for years.",
        "I was logged out on all devices and can't sign back in.",
        "Please give {fullname} admin rights on our account.",
        "My username was changed and I didn't do it.",
    ],
    "returns": [
        "I'd like to return the {item} I bought on {date}.",
        "How do I get a return label for order {order}?",
        "The {item} arrived damaged and I want to send it back.",
        "I received the wrong size, can I exchange it for {size}?",
        "What is your return policy for opened items?",
        "I sent the {item} back {days} days ago, when will the return be processed?",
        "Can I exchange the {colour} one for a different colour?",
        "The {item} doesn't match the description, I want to return it.",
        "Is it too late to return something I bought {days} days ago?",
        "The returns portal says order {order} isn't eligible for return.",
        "I want to exchange the {item} for the newer model.",
        "I dropped the return off at {carrier}, how do I know you got it?",
        "Can I return a gift without the receipt?",
        "The {item} is defective, I'd like a replacement.",
        "My return was rejected, can you tell me why?",
        "I accidentally ordered two of the {item}, can I send one back?",
        "Where do I send the return? The label has no address on it.",
        "Can I return just one item from order {order}?",
        "The replacement {item} you sent is also faulty.",
        "I changed my mind about the {item}, it's still sealed in the box.",
        "The {item} broke after {months} months, is it still under warranty?",
        "Please arrange a pickup for my return, the box is too big to drop off.",
        "The return label you emailed doesn't scan at the post office.",
        "I'd like to swap the {item} for store credit.",
        "Part of the {item} was missing from the box, can I return it for a full one?",
        "I returned the wrong item by mistake, can you send it back to me?",
        "I have return authorisation {rma}, what are the next steps?",
        "Is there a restocking fee if I return the {item}?",
        "Can I return items bought in your {city} store by mail?",
        "The {item} stopped working, I want to make a warranty claim.",
        "How many days do I have to return the {item}?",
        "Can I exchange the {item} in {size} for one size bigger?",
        "The {item} smells of chemicals, I want to return it.",
        "I'd like to send back the {item}, it's not what I expected.",
    ],
    "sales": [
        "Do you offer volume discounts for {count} licences?",
        "Can I get a quote for {count} units of the {product}?",
        "What's the difference between the {plan} and {plan} plans?",
        "Is there a free trial of the {plan} plan?",
        "We are a school, do you have education pricing?",
        "I'd like to talk to someone about an enterprise contract.",
        "Do you have a reseller or partner programme?",
        "Is the {product} compatible with my {device}? I'm thinking of buying one.",
        "When will the {product} be back in stock?",
        "Could we book a demo for our team next week?",
        "Do you offer discounts for nonprofits?",
        "Is there a promo code for first-time customers?",
        "We want {count} seats on the {plan} plan, who should I talk to?",
        "Do you sell gift cards?",
        "Are there bulk prices for orders over {amount}?",
        "What is included in the premium support add-on?",
        "Could you send me a price list for your wholesale catalogue?",
        "Will there be a Black Friday sale this year?",
        "Can I pre-order the new {product}?",
        "How much does the {plan} plan cost per user?",
        "We're looking to buy {count} of the {product} for our office in {city}.",
        "Do you have a distributor in {country}?",
        "Can you put together a bundle with the {product} and accessories?",
        "Does the {plan} plan include API access?",
        "I'm interested in a partnership, who handles business development?",
        "Could you prepare a proposal for a three-year contract?",
        "Do you price match other retailers?",
        "Is there a student discount?",
        "Can your sales rep {name} call me back about the offer?",
        "We're comparing vendors, can you send a product brochure?",
        "What would {count} licences of the {plan} plan cost for a year?",
        "Is the {product} available in {colour}? I'd like to order a few.",
        "Do you have a referral programme for existing customers?",
        "We'd like to become an authorised dealer in {country}.",
    ],
}

DETAIL = {
    "billing": [
        "The amount was {amount}.",
        "I've checked my bank statement and it's definitely there twice.",
        "This is the second month in a row this has happened.",
        "The charge shows up as a pending transaction on my {card}.",
        "Our accounts department needs this sorted before month end.",
        "I only have one subscription with you.",
        "My billing address is in {city}.",
        "Please credit the difference back to my card.",
    ],
    "shipping": [
        "The tracking number is {tracking}.",
        "It was supposed to arrive on {date}.",
        "I live in {city} and other parcels arrive fine.",
        "The courier was {carrier}.",
        "I've already checked with my neighbours and the building reception.",
        "The estimated delivery on the website said {days} days.",
        "Nobody left a delivery card either.",
    ],
    "technical": [
        "I already tried restarting it and reinstalling the app.",
        "I'm on {os} with the latest updates.",
        "The error message says {error}.",
        "It worked fine until {date}.",
        "I'm using {browser} on my {device}.",
        "Clearing the cache didn't help.",
        "We're on version {version}.",
        "The logs show a connection timeout.",
    ],
    "account": [
        "My username is {username}.",
        "The email on the account is {email}.",
        "I've checked my spam folder already.",
        "I don't have access to my old phone number anymore.",
        "I've been locked out since {date}.",
        "I'm the account owner for {company}.",
        "I tried the forgot password link twice.",
    ],
    "returns": [
        "It's still in the original packaging.",
        "The order number is {order}.",
        "I bought it on {date}.",
        "I have photos of the damage if you need them.",
        "I'd prefer an exchange rather than store credit.",
        "The return window on your site says {days} days.",
        "I've printed the label but don't know where to drop it off.",
    ],
    "sales": [
        "We're a team of about {count} people.",
        "Our budget is around {amount}.",
        "We're based in {city}.",
        "We'd need it rolled out by {month}.",
        "I'm the procurement lead at {company}.",
        "We're currently evaluating two other vendors.",
        "Ideally we'd sign before the end of the quarter.",
    ],
}

TERSE = {
    "billing": [
        "double charged on {date}, please fix",
        "need invoice for order {order}",
        "charged {amount} twice why",
        "card declined again at checkout",
        "wrong amount on my bill",
        "please send receipt for {amount} payment",
        "refund the extra charge please",
        "VAT invoice needed for {company}",
    ],
    "shipping": [
        "where is my package {order}",
        "tracking {tracking} not updating",
        "parcel still not delivered after {days} days",
        "need to change delivery address please",
        "package marked delivered but not here",
        "do you ship to {country}?",
        "order {order} not shipped yet??",
        "my delivery is late again",
    ],
    "technical": [
        "app keeps crashing on {device}",
        "error {error} when syncing",
        "my {product} won't turn on",
        "your website is down for me",
        "cannot connect {product} to wifi",
        "sync broken since update {version}",
        "login page shows blank screen in {browser}",
        "my {product} keeps disconnecting",
    ],
    "account": [
        "cant log in to my account",
        "password reset email not arriving",
        "please delete my account",
        "my account is locked, please unlock",
        "need to change my email to {email}",
        "2FA code not working",
        "how do I close my account",
        "someone hacked my account",
    ],
    "returns": [
        "need a return label for {order}",
        "want to return the {item}",
        "exchange {item} for {size} please",
        "where do I send my return",
        "return still not processed after {days} days",
        "{item} broken, want replacement",
        "how to return an opened item?",
        "status of return {rma}?",
    ],
    "sales": [
        "quote for {count} licences please",
        "do you have a student discount",
        "price for {count} units of {product}?",
        "is there a free trial available",
        "interested in the {plan} plan for our team",
        "looking for a reseller in {country}",
        "any bulk discount for schools?",
        "want to book a sales demo",
    ],
}

# Clauses that borrow another queue's vocabulary.  They are added to tickets
# whose true queue is different, so words like "refund" or "tracking" are
# not perfect evidence of one queue.
CROSS = {
    "billing": [
        "I'd also like my money back for this.",
        "And I was charged {amount} for it already.",
        "Please make sure I get refunded to my {card}.",
        "The payment of {amount} already left my account.",
        "I don't want to be billed again for it.",
    ],
    "shipping": [
        "It took {days} days to arrive in the first place.",
        "The tracking never updated either.",
        "The courier also left the box at the wrong door.",
        "Delivery to {city} was already late.",
        "It came with {carrier} and the box was dented.",
    ],
    "technical": [
        "The app also showed an error when I tried.",
        "Your website kept crashing while I did this.",
        "The page froze on {browser} when I clicked submit.",
        "I got error {error} on the site as well.",
    ],
    "account": [
        "I also had to reset my password to even get in.",
        "I'm logged in as {email} if that helps.",
        "My account login kept timing out too.",
        "I couldn't find this in my account settings.",
    ],
    "returns": [
        "Otherwise I'll have to send it back.",
        "If this can't be fixed I want to return it.",
        "I might need a return label.",
        "I already exchanged it once before.",
    ],
    "sales": [
        "We're also thinking of buying {count} more licences.",
        "I was considering upgrading to the {plan} plan.",
        "Could someone also send me a quote for extra units?",
        "We may expand the contract next year.",
    ],
}

# Uninformative tickets: the writer never says what the problem is.  They are
# realistic and cap the achievable accuracy.
VAGUE = [
    "I have a problem with order {order}, please call me.",
    "Something is wrong with my account, can someone help?",
    "Please contact me about my recent purchase.",
    "Nothing works the way it should, I need help.",
    "I have a question about my order from {date}.",
    "Can someone get back to me as soon as possible?",
    "Still waiting for an answer to my previous email.",
    "Following up on my earlier message about the {item}.",
    "There's an issue with the {product}, please advise.",
    "Need help with order {order}.",
]

# Sentences with no queue signal: frustration, loyalty, context.
GENERIC = [
    "This is really frustrating.",
    "I've been a customer for {months} years and never had this problem.",
    "I've already emailed twice with no reply.",
    "Maybe it's naïve of me, but I expected this to just work.",
    "Honestly it feels like déjà vu, the same thing happened last year.",
    "I need this sorted today if possible.",
    "I work at a café in {city} so I'm hard to reach by phone.",
    "My colleague {name} had the same issue last month.",
    "Please don't send me another automated reply.",
    "I'm travelling until {future}, email is best.",
    "Sorry if this is the wrong place to ask.",
    "It's not urgent but I'd appreciate an answer.",
]

# Long background sentences, also without queue signal, used by the
# occasional rambling ticket so that lengths reach about 80 words.
STORY = [
    "I'm writing on behalf of my elderly father who isn't very comfortable with computers, so please keep the explanation simple.",
    "We run a small business in {city} with about a dozen staff and we rely on your products every single day.",
    "I have been going back and forth on this for a while now and I have spoken to two different agents already.",
    "Last time I contacted you it took more than a week to get a reply, so I hope this one is quicker.",
    "I bought this as a birthday present for my friend {name} and I really want to get it sorted before the party.",
    "To be fair your service has always been good in the past, which is why this experience surprised me.",
    "I'm currently abroad in {country} for work and only have access to email in the evenings.",
]

OPENERS = [
    "Hi,", "Hello,", "Hi there,", "Hello team,", "Dear support,",
    "Dear Sir or Madam,", "Hey,", "Good morning,", "Good afternoon,",
    "Hi {name},", "To whom it may concern,", "Bonjour,", "Hallo,", "Hola,",
    "Hi support team,", "Hey guys,", "Greetings,", "Quick question:",
    "Hoping you can help.", "Sorry to bother you again.",
]
CLOSERS = [
    "Thanks.", "Thank you!", "Thanks in advance.", "Many thanks.",
    "Cheers.", "Merci beaucoup!", "Danke!", "Gracias.", "Please advise.",
    "Appreciate the help.", "Looking forward to your reply.",
    "Please get back to me soon.", "ASAP please.", "Thank you for your help.",
    "Any help is appreciated.", "Kind regards.", "Thx",
]
SIGNATURES = [
    "{fullname}", "Best, {name}", "Regards, {fullname}", "- {name}",
    "{name} from {company}", "Sent from my {device}", "Cheers, {name}",
]
SHOUT_WORDS = ["URGENT", "ASAP", "STILL", "AGAIN", "NOT", "PLEASE", "TODAY"]


# "on yesterday" / "on last Monday" / "on 3 weeks ago" read wrong: relative
# dates take no "on".
BAD_ON_DATE = re.compile(r"\bon (yesterday|today|this morning|last \w+|\S+ \S+ ago|a \w+ ago)\b")


def fill(template, rng):
    """Replace every {slot} in template with a freshly drawn slot value."""
    text = re.sub(r"\{(\w+)\}", lambda m: SLOTS[m.group(1)](rng), template)
    return BAD_ON_DATE.sub(r"\1", text)


def add_typo(word, rng):
    """Return word with one realistic keyboard slip: swap, drop or double."""
    # Only touch plain alphabetic words of some length, so order numbers,
    # amounts and e-mail addresses stay intact and the text stays readable.
    if len(word) < 4 or not word.isalpha():
        return word
    i = rng.randrange(1, len(word) - 1)
    kind = rng.randrange(3)
    if kind == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if kind == 1:
        return word[:i] + word[i + 1:]
    return word[:i] + word[i] + word[i:]


def sprinkle_typos(text, rng):
    """Apply add_typo to each word with a small probability."""
    words = text.split(" ")
    for k, word in enumerate(words):
        if rng.random() < P_TYPO_PER_WORD:
            words[k] = add_typo(word, rng)
    return " ".join(words)


def vary_punctuation(sentence, rng):
    """Sometimes swap the final full stop for !, !!, !!! or ..., or drop it."""
    if not sentence.endswith("."):
        return sentence
    r = rng.random()
    if r < P_EXCLAIM:
        return sentence[:-1] + rng.choice(["!", "!!", "...", "!!!"])
    if r < P_EXCLAIM + P_NO_STOP:
        return sentence[:-1]  # lazy writers skip the full stop
    return sentence


def lower_first(text):
    """Lower-case the first letter, for a sentence that follows "Hi," etc.

    "I", "I'm", "API", "2FA" and the like keep their capitals.
    """
    first_word = text.split(" ", 1)[0]
    if first_word == "I" or first_word.startswith("I'") or not first_word[1:2].islower():
        return text
    return text[:1].lower() + text[1:]


def cross_mention(queue, rng):
    """Return (sentence, other_queue) borrowing a related queue's wording.

    Usually a short clause ("I'd also like my money back"); sometimes a whole
    second issue ("Also, my package hasn't arrived"), as when customers pack
    two problems into one e-mail.  The ticket keeps its original label.
    """
    other = rng.choice(RELATED_QUEUES[queue])
    if rng.random() < P_CROSS_FULL:
        issue = fill(rng.choice(CORE[other]), rng)
        lead = rng.choice(["Also, ", "On top of that, ", "Separately, ",
                           "And another thing: ", "While I'm at it, "])
        return lead + lower_first(issue), other
    return fill(rng.choice(CROSS[other]), rng), other


def build_ticket(queue, rng):
    """Compose the text of one ticket whose true queue is `queue`.

    Returns (body, cross_queue) where cross_queue names the second queue whose
    vocabulary was mixed in, or None.  Drafts longer than MAX_WORDS are
    redrawn, which keeps lengths within the demo's ~5 to ~80 words while the
    output stays a pure function of the seed.
    """
    while True:
        body, cross_queue = draft_ticket(queue, rng)
        if len(body.split()) <= MAX_WORDS:
            return body, cross_queue


def draft_ticket(queue, rng):
    """Draw one candidate ticket for build_ticket (may be over MAX_WORDS)."""
    if rng.random() < P_TERSE:
        # Short note-like tickets: no greeting, often lower case.
        body = fill(rng.choice(TERSE[queue]), rng)
        if rng.random() < 0.5:
            body = body[0].upper() + body[1:]
        return sprinkle_typos(body, rng), None

    rambling = rng.random() < P_RAMBLING
    parts = []
    opener = None
    if rambling or rng.random() < P_OPENER:
        opener = fill(rng.choice(OPENERS), rng)
        parts.append(opener)
    if rambling:
        # One or two background sentences; three would run past ~80 words.
        stories = rng.sample(STORY, 2 if rng.random() < 0.3 else 1)
        parts.extend(fill(story, rng) for story in stories)
    elif rng.random() < P_GENERIC * 0.4:
        parts.append(fill(rng.choice(GENERIC), rng))  # context before the ask

    if rng.random() < P_VAGUE:
        core = fill(rng.choice(VAGUE), rng)
    else:
        core = vary_punctuation(fill(rng.choice(CORE[queue]), rng), rng)
    if parts == [opener] and opener.endswith(",") and rng.random() < 0.5:
        core = lower_first(core)  # "Hi, my parcel..." reads as one line
    parts.append(core)

    if rambling or rng.random() < P_DETAIL:
        two = rambling or rng.random() < P_SECOND_DETAIL
        parts.extend(fill(d, rng) for d in rng.sample(DETAIL[queue], 2 if two else 1))

    cross_queue = None
    if rng.random() < P_CROSS_MENTION:
        clause, cross_queue = cross_mention(queue, rng)
        # Mostly after the core sentence, sometimes in front of it.
        position = len(parts) if rng.random() < 0.7 else max(0, len(parts) - 1)
        parts.insert(position, clause)

    if rambling or rng.random() < P_GENERIC * 0.6:
        parts.append(fill(rng.choice(GENERIC), rng))
    if rambling or rng.random() < P_CLOSER:
        parts.append(rng.choice(CLOSERS))
    if rng.random() < P_SIGNATURE:
        parts.append(fill(rng.choice(SIGNATURES), rng))

    body = " ".join(parts)
    if rng.random() < P_SHOUT_WORD:
        body = rng.choice(SHOUT_WORDS) + ": " + body
    if rng.random() < P_EMOJI:
        body = body + " " + rng.choice(EMOJI)
    return sprinkle_typos(body, rng), cross_queue


def restyle_case(body, rng):
    """Occasionally lower-case a whole ticket, as hurried writers do."""
    if rng.random() < P_LOWERCASE:
        return body.lower()
    return body


def clean_field(text):
    """Make text safe for one TSV field in both COPY text and CSV formats.

    Tabs and newlines would break the row; backslashes are escapes in COPY
    text format and double quotes are quotes in CSV format, so none may occur.
    """
    text = re.sub(r"[\t\r\n]+", " ", text)
    text = text.replace("\\", "/").replace('"', "'")
    return re.sub(r" {2,}", " ", text).strip()


def queue_counts(rows):
    """Split `rows` into per-queue counts that follow QUEUE_SHARES exactly.

    Exact counts (largest remainder rounding) rather than sampling keep the
    class balance identical across seeds.
    """
    raw = [(name, share * rows) for name, share in QUEUE_SHARES]
    counts = {name: int(value) for name, value in raw}
    leftover = rows - sum(counts.values())
    by_remainder = sorted(raw, key=lambda nv: nv[1] - int(nv[1]), reverse=True)
    for name, _ in by_remainder[:leftover]:
        counts[name] += 1
    return counts


def generate(rows, seed, noise):
    """Return a list of (body, queue) rows and statistics about them."""
    rng = random.Random(seed)
    counts = queue_counts(rows)
    true_labels = [q for q in QUEUES for _ in range(counts[q])]
    rng.shuffle(true_labels)

    # Label noise: an exact number of rows gets a uniformly chosen wrong queue.
    noisy_rows = set(rng.sample(range(rows), int(round(noise * rows))))

    data = []
    cross_total = 0
    for index, queue in enumerate(true_labels):
        body, cross_queue = build_ticket(queue, rng)
        body = clean_field(restyle_case(body, rng))
        cross_total += cross_queue is not None
        label = queue
        if index in noisy_rows:
            label = rng.choice([q for q in QUEUES if q != queue])
        data.append((body, label))
    stats = {"cross": cross_total, "noisy": len(noisy_rows)}
    return data, stats


# ---------------------------------------------------------------------------
# Generation mode (--generation): prompt -> one line of JSON, for training a
# decoder to extract fields.  Tickets are shorter and unambiguous here, so
# that exact match of the whole line is attainable.
# ---------------------------------------------------------------------------

# The instruction before every ticket: short, because training time on the
# CPU scales with tokens (28 of SmolLM2's tokens; queue names separated by
# "|" or ", " would cost 5 to 7 more), yet enough for a zero-shot model to try.
EXTRACT_INSTRUCTION = ('Reply with JSON {"queue","order","product"} for this ticket '
                       '(queue: %s; null if absent): ' % " ".join(QUEUES))

# Slots whose value is the product the JSON names: the shop's catalogue.  A
# {device} is the customer's own phone or computer, not a product.
PRODUCT_SLOTS = ("product", "item", "audio")

# Most templates name no order and no product (technical, account and sales
# ones never name an order), so each row first draws whether its answer has
# an order and a product; a draft that lacks a wanted one gets one of these
# sentences, and a draft that has an unwanted one is redrawn.
ORDER_MENTIONS = [
    "My order number is {order}.", "Order {order}.", "It's about order {order}.",
    "Ref: order {order}", "(order {order})", "This concerns my order {order}.",
    "order {order}", "Re order {order}.",
]
PRODUCT_MENTIONS = [
    "It's about my {product}.", "This is for the {product}.", "Product: {product}.",
    "I have the {item} from you.", "I bought the {item} from you last year.",
    "re: {product}", "(the {item})", "It's the {audio} I got from you.",
]
P_EXTRACT_ORDER = 0.45    # answers with an order
P_EXTRACT_PRODUCT = 0.45  # answers with a product
P_EXTRACT_TERSE = 0.30    # note-like ticket (the TERSE templates)
P_EXTRACT_OPENER = 0.40   # "Hi," and the like
P_EXTRACT_DETAIL = 0.25   # one queue-specific detail sentence
P_EXTRACT_CLOSER = 0.35   # "Thanks." and the like
EXTRACT_MAX_WORDS = 40    # longer drafts are redrawn
EXTRACT_MAX_REDRAWS = 10000


def order_id(written):
    """Return the order number a ticket wrote, without "#" or "no. "."""
    for prefix in ("#", "no. "):
        if written.startswith(prefix):
            return written[len(prefix):]
    return written


def fill_recording(template, rng, found):
    """Fill template like fill(), adding order and product values to found.

    found maps "order" and "product" to the set of values the ticket names.
    """
    def slot(match):
        name = match.group(1)
        value = SLOTS[name](rng)
        if name == "order":
            found["order"].add(order_id(value))
        elif name in PRODUCT_SLOTS:
            found["product"].add(value)
        return value

    text = re.sub(r"\{(\w+)\}", slot, template)
    return BAD_ON_DATE.sub(r"\1", text)


def draft_extraction_ticket(queue, want_order, want_product, rng):
    """Draw one short ticket of `queue`; return (body, found values).

    Only the queue's own templates: no second-queue wording, no vague or
    rambling tickets, no whole-ticket lower case, and typos only in the
    template's words (never in an order number or a product name), so the
    queue, order and product can always be read off the text.  An order or
    product that is wanted but missing is added by a mention sentence.
    """
    found = {"order": set(), "product": set()}

    def part(template):
        return fill_recording(sprinkle_typos(template, rng), rng, found)

    parts = []
    terse = rng.random() < P_EXTRACT_TERSE
    if terse:
        template = rng.choice(TERSE[queue])
        body = part(template)
        if not template.startswith("{") and rng.random() < 0.5:
            body = body[0].upper() + body[1:]
        parts.append(body)
    else:
        if rng.random() < P_EXTRACT_OPENER:
            parts.append(part(rng.choice(OPENERS)))
        core = vary_punctuation(part(rng.choice(CORE[queue])), rng)
        if parts and parts[0].endswith(",") and rng.random() < 0.5:
            core = lower_first(core)
        parts.append(core)
        if rng.random() < P_EXTRACT_DETAIL:
            parts.append(part(rng.choice(DETAIL[queue])))
    mentions = []
    if want_order and not found["order"]:
        mentions.append(part(rng.choice(ORDER_MENTIONS)))
    if want_product and not found["product"]:
        mentions.append(part(rng.choice(PRODUCT_MENTIONS)))
    if terse:
        # a note goes on as a note: "2FA code not working, order #123456"
        body = parts[0]
        for mention in mentions:
            body += (", " if body[-1].isalnum() else " ") + lower_first(mention).rstrip(".")
        return body, found
    parts.extend(mentions)
    if rng.random() < P_EXTRACT_CLOSER:
        parts.append(rng.choice(CLOSERS))
    return " ".join(parts), found


def extraction_answer(queue, found):
    """Return the compact JSON line: keys in a fixed order, no spaces."""
    answer = {"queue": queue,
              "order": min(found["order"]) if found["order"] else None,
              "product": min(found["product"]) if found["product"] else None}
    return json.dumps(answer, ensure_ascii=False, separators=(",", ":"))


def build_extraction_row(queue, rng, seen):
    """Return (prompt, completion) for a new ticket of `queue`.

    Whether the answer names an order and a product is drawn first.  Drafts
    are redrawn when they name two different orders or products (the answer
    would be ambiguous), an order or product that was not wanted, when a value does not appear verbatim in the
    text, when they are long, or when the prompt is already in `seen` (so
    held-out rows are never copies of training rows).
    """
    want_order = rng.random() < P_EXTRACT_ORDER
    want_product = rng.random() < P_EXTRACT_PRODUCT
    for _ in range(EXTRACT_MAX_REDRAWS):
        body, found = draft_extraction_ticket(queue, want_order, want_product, rng)
        body = clean_field(body)
        if len(found["order"]) > 1 or len(found["product"]) > 1:
            continue
        if bool(found["order"]) != want_order or bool(found["product"]) != want_product:
            continue
        if any(value not in body for values in found.values() for value in values):
            continue
        if len(body.split()) > EXTRACT_MAX_WORDS:
            continue
        prompt = EXTRACT_INSTRUCTION + body
        if prompt in seen:
            continue
        seen.add(prompt)
        return prompt, extraction_answer(queue, found)
    raise RuntimeError("no new %s ticket in %d draws: too many rows for the templates"
                       % (queue, EXTRACT_MAX_REDRAWS))


def generate_extraction(rows, seed):
    """Return a list of (prompt, completion) rows and statistics about them."""
    rng = random.Random(seed)
    counts = queue_counts(rows)
    queues = [q for q in QUEUES for _ in range(counts[q])]
    rng.shuffle(queues)
    seen = set()
    data = [build_extraction_row(queue, rng, seen) for queue in queues]
    answers = [json.loads(completion) for _, completion in data]
    stats = {
        "queues": [a["queue"] for a in answers],
        "with_order": sum(a["order"] is not None for a in answers),
        "with_product": sum(a["product"] is not None for a in answers),
        "words": [len(prompt[len(EXTRACT_INSTRUCTION):].split()) for prompt, _ in data],
    }
    return data, stats


def write_tsv(data, stream, header=("body", "queue")):
    """Write the header and the rows as tab-separated values."""
    stream.write("\t".join(header) + "\n")
    for row in data:
        stream.write("\t".join(row) + "\n")


def print_summary(data, stats, stream):
    """Print rows per queue and length statistics, for a quick sanity check."""
    lengths = [len(body.split()) for body, _ in data]
    total = len(data)
    stream.write("make_demo_data: %d rows (queues as written, after noise)\n" % total)
    for queue in QUEUES:
        n = sum(1 for _, q in data if q == queue)
        stream.write("  %-10s %6d  %5.1f%%\n" % (queue, n, 100.0 * n / total))
    stream.write("  words: mean %.1f, min %d, max %d\n"
                 % (sum(lengths) / total, min(lengths), max(lengths)))
    stream.write("  second-queue mentions: %d (%.1f%%), relabelled as noise: %d (%.1f%%)\n"
                 % (stats["cross"], 100.0 * stats["cross"] / total,
                    stats["noisy"], 100.0 * stats["noisy"] / total))


def print_extraction_summary(stats, stream):
    """Print rows per queue, how many name an order or a product, and lengths."""
    total = len(stats["queues"])
    words = sorted(stats["words"])
    stream.write("make_demo_data: %d rows (prompt, completion: JSON)\n" % total)
    for queue in QUEUES:
        n = stats["queues"].count(queue)
        stream.write("  %-10s %6d  %5.1f%%\n" % (queue, n, 100.0 * n / total))
    stream.write("  with an order: %d (%.1f%%), with a product: %d (%.1f%%)\n"
                 % (stats["with_order"], 100.0 * stats["with_order"] / total,
                    stats["with_product"], 100.0 * stats["with_product"] / total))
    stream.write("  ticket words: mean %.1f, median %d, min %d, max %d (plus %d of instruction)\n"
                 % (sum(words) / total, words[total // 2], words[0], words[-1],
                    len(EXTRACT_INSTRUCTION.split())))


def parse_args(argv):
    """Parse and validate the command line."""
    parser = argparse.ArgumentParser(
        description="Generate a synthetic support-ticket TSV: (body, queue), or "
                    "with --generation (prompt, completion) for a decoder.")
    parser.add_argument("output", help="path of the TSV to write, or - for stdout")
    parser.add_argument("--generation", action="store_true",
                        help="write prompt<TAB>completion rows: a ticket in, one line of "
                             "JSON (queue, order, product) out; no label noise")
    parser.add_argument("--rows", type=int, default=None,
                        help="number of tickets (default 6000; with --generation 2000)")
    parser.add_argument("--seed", type=int, default=2026,
                        help="random seed; same seed gives the same file (default 2026)")
    parser.add_argument("--noise", type=float, default=None,
                        help="fraction of rows given a wrong queue (default 0.05; "
                             "not with --generation)")
    args = parser.parse_args(argv)
    if args.rows is None:
        args.rows = 2000 if args.generation else 6000
    if args.rows < 1:
        parser.error("--rows must be at least 1")
    if args.generation and args.noise is not None:
        parser.error("--noise does not apply to --generation (its answers are exact)")
    if args.noise is None:
        args.noise = 0.05
    if not 0.0 <= args.noise <= 1.0:
        parser.error("--noise must be between 0 and 1")
    return args


def main(argv=None):
    """Entry point: generate the data set and write it plus a summary."""
    args = parse_args(argv)
    if args.generation:
        data, stats = generate_extraction(args.rows, args.seed)
        header = ("prompt", "completion")
    else:
        data, stats = generate(args.rows, args.seed, args.noise)
        header = ("body", "queue")
    if args.output == "-":
        # Force UTF-8 and "\n" whatever the locale, so output is byte-identical.
        out = open(sys.stdout.fileno(), "w", encoding="utf-8", newline="\n",
                   closefd=False)
        write_tsv(data, out, header)
        out.flush()
    else:
        with open(args.output, "w", encoding="utf-8", newline="\n") as out:
            write_tsv(data, out, header)
    if args.generation:
        print_extraction_summary(stats, sys.stderr)
    else:
        print_summary(data, stats, sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
