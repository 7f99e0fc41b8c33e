"""A deterministic generator of realistic commerce events (orders, product creations/updates/views).

The same :class:`GeneratorConfig` always yields the same events, byte for byte: every random draw
comes from ``numpy.random.Generator`` (PCG64) instances seeded from ``config.seed`` and consumed
in a fixed order. The generated world has the shape that matters for per-store models:

- store sizes follow a power law (a few big stores, a long tail of small ones; every store gets at
  least ``min_store_events`` events); each store sells in one currency;
- each store has a catalogue drawn from a fixed taxonomy (:data:`CATEGORIES`); titles and
  descriptions are made of words that correlate with the category (with some cross-category noise),
  so a text classifier can learn them; ~``uncategorised_fraction`` of products carry no category;
- product popularity (Zipf within the catalogue) and customer activity (Zipf within the store's
  customers) are skewed, so repeat customers and best sellers exist;
- a product's ``created`` event always comes before it appears in an order, a view or an update,
  both in sequence and in event time; views outnumber orders and most come from known customers;
- event times advance at ``events_per_second`` from ``start_ms`` with +-``jitter_ms`` of noise, so
  events are nearly, not perfectly, ordered.

With ``malformed_fraction > 0`` some events are replaced by bad messages for dead-letter tests:
undecodable bytes (``garbage``, ``truncated``) or decodable but invalid records
(``quantity_zero``, ``negative_price``, ``empty_store_id``); :attr:`SyntheticEvent.malformed` names
the defect. ``created`` events are never replaced, so good events never reference a product that
was not created.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from storeml.errors import CodecError, ConfigError
from storeml.schemas.codec import HEADER_SIZE, get_codec

__all__ = [
    "CATEGORIES",
    "CHANNELS",
    "CURRENCIES",
    "CategorySpec",
    "MALFORMED_KINDS",
    "GeneratorConfig",
    "Product",
    "SyntheticEvent",
    "TopicKind",
    "catalogue",
    "generate",
    "store_ids",
]

TopicKind = Literal["orders", "products"]

#: Reasons an injected message is bad, as set in :attr:`SyntheticEvent.malformed`.
#: ``garbage`` and ``truncated`` do not decode; the others decode but break a record rule
#: (``quantity >= 1``, prices ``>= 0``, non-empty ``store_id``).
MALFORMED_KINDS: tuple[str, ...] = (
    "garbage",
    "truncated",
    "quantity_zero",
    "negative_price",
    "empty_store_id",
)

#: Sales channels and how often orders come through them.
CHANNELS: tuple[tuple[str, float], ...] = (
    ("web", 0.50),
    ("app", 0.30),
    ("store", 0.12),
    ("marketplace", 0.08),
)

#: Store currencies: (ISO 4217 code, share of stores, units per USD, minor-unit exponent).
CURRENCIES: tuple[tuple[str, float, float, int], ...] = (
    ("USD", 0.40, 1.0, 2),
    ("EUR", 0.25, 0.92, 2),
    ("GBP", 0.10, 0.79, 2),
    ("CAD", 0.05, 1.36, 2),
    ("AUD", 0.05, 1.52, 2),
    ("JPY", 0.05, 150.0, 0),
    ("SEK", 0.04, 10.5, 2),
    ("CHF", 0.03, 0.88, 2),
    ("PLN", 0.03, 4.0, 2),
)


@dataclass(frozen=True)
class CategorySpec:
    """A taxonomy category: nouns and words its product texts use, and its USD price range."""

    nouns: tuple[str, ...]
    words: tuple[str, ...]
    price_usd: tuple[float, float]


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


def _cat(nouns: str, words: str, price_usd: tuple[float, float]) -> CategorySpec:
    return CategorySpec(_words(nouns), _words(words), price_usd)


#: The global taxonomy: category -> title/description nouns and words, and a USD price range.
CATEGORIES: dict[str, CategorySpec] = {
    "shoes": _cat(
        "sneaker boot sandal loafer heel slipper trainer clog",
        "leather running suede lace-up cushioned sole insole waterproof trail ankle slip-on grip",
        (25, 220),
    ),
    "apparel": _cat(
        "shirt dress jacket hoodie sweater jeans skirt coat",
        "cotton linen slim-fit knit denim wool sleeve collar casual stretch tailored zip",
        (10, 180),
    ),
    "electronics": _cat(
        "headphones speaker camera television soundbar charger drone projector",
        "wireless bluetooth hdmi battery noise-cancelling 4k usb-c bass stereo smart hd remote",
        (15, 1500),
    ),
    "computers": _cat(
        "laptop monitor keyboard mouse router tablet ssd webcam",
        "gaming ram processor ghz display ergonomic mechanical backlit gigabit storage ports dpi",
        (20, 2500),
    ),
    "phones": _cat(
        "smartphone case screen-protector earbuds powerbank cable holder charger",
        "5g unlocked dual-sim camera megapixel "
        "fast-charging magsafe tempered-glass mah android ios",
        (8, 1200),
    ),
    "home": _cat(
        "lamp rug curtain pillow blanket mirror vase candle",
        "decor living-room cozy velvet woven scented ambient bedroom soft accent throw handmade",
        (8, 300),
    ),
    "kitchen": _cat(
        "pan knife blender kettle mug toaster skillet cutlery",
        "nonstick stainless dishwasher-safe cooking ceramic "
        "cast-iron espresso brew chef baking oven",
        (6, 400),
    ),
    "furniture": _cat(
        "sofa chair table desk shelf bed wardrobe stool",
        "oak walnut upholstered assembly drawer seating "
        "storage frame cushion recliner sturdy veneer",
        (40, 2000),
    ),
    "garden": _cat(
        "hose planter shovel mower trimmer seeds fertilizer sprinkler",
        "outdoor lawn soil plants watering pruning "
        "greenhouse weeds flowers raised-bed compost yard",
        (5, 600),
    ),
    "toys": _cat(
        "puzzle doll blocks robot plush board-game car playset",
        "kids toddler educational colorful ages fun building stacking imagination batteries play",
        (5, 150),
    ),
    "books": _cat(
        "novel cookbook biography guide paperback hardcover anthology atlas",
        "author chapters edition bestselling fiction "
        "history illustrated pages reading story memoir",
        (5, 60),
    ),
    "beauty": _cat(
        "serum lipstick mascara moisturizer perfume shampoo cleanser palette",
        "skin hydrating fragrance matte glow vitamin hair cruelty-free spf nourishing scent lashes",
        (5, 150),
    ),
    "health": _cat(
        "vitamins thermometer bandage supplement mask tablets scale brace",
        "immune daily capsules dosage wellness first-aid "
        "pain relief protein digital medical support",
        (4, 120),
    ),
    "sports": _cat(
        "dumbbell yoga-mat racket ball bicycle helmet jersey treadmill",
        "fitness workout training gym resistance team "
        "tennis football cardio weights sweat athletic",
        (8, 900),
    ),
    "outdoors": _cat(
        "tent backpack sleeping-bag lantern compass hammock stove cooler",
        "camping hiking waterproof trail survival insulated "
        "portable rugged summit liters nylon fire",
        (10, 500),
    ),
    "grocery": _cat(
        "coffee tea pasta snack olive-oil honey cereal chocolate",
        "organic roasted gluten-free flavor pantry grams "
        "beans whole-grain sweet fresh blend snacks",
        (2, 40),
    ),
    "pet": _cat(
        "leash collar kibble litter aquarium scratcher treats bed",
        "dog cat puppy kitten chew grooming paws feline canine fish bird pet-safe",
        (3, 150),
    ),
    "jewelry": _cat(
        "necklace ring bracelet earrings pendant watch anklet brooch",
        "gold silver sterling diamond gemstone karat pearl chain charm engraved elegant sparkle",
        (15, 1200),
    ),
    "automotive": _cat(
        "wiper tire dashcam jumper floor-mat seat-cover wax headlight",
        "car vehicle engine motor truck suv polish torque mount garage wheel highway",
        (8, 400),
    ),
    "office": _cat(
        "notebook pen stapler planner binder printer-paper desk-organizer marker",
        "stationery ink paper a4 ruled refill school office filing sticky writing calendar",
        (2, 80),
    ),
}

_CATEGORY_NAMES: tuple[str, ...] = tuple(CATEGORIES)
_GENERIC_WORDS: tuple[str, ...] = _words(
    "premium classic new deluxe essential everyday modern vintage compact lightweight durable eco"
    " pro original limited edition set pack gift value quality best popular bundle black white"
    " blue red green grey large small"
)
_BRANDS: tuple[str, ...] = _words(
    "Acme Northwind Contoso Fabrikam Globex Initech Umbrella Stark Wayne Hooli Vandelay Soylent"
    " Tyrell Cyberdyne Aperture Monarch Oscorp Gringotts Wonka Duff"
)


@dataclass(frozen=True, slots=True)
class Product:
    """A catalogue product as announced by its ``created`` event.

    ``category`` is the true category (known to the generator, useful as a label for evaluating a
    classifier); ``listed_category`` is what the store published: ``None`` for uncategorised
    products. Prices may change later through ``updated`` events.
    """

    store_id: str
    product_id: str
    title: str
    description: str
    price_minor: int
    category: str
    listed_category: str | None


@dataclass(frozen=True, slots=True)
class SyntheticEvent:
    """One message to produce: the topic it goes to, its key and value, and what it holds.

    ``record`` is the decoded form of ``value``, or ``None`` when ``value`` does not decode
    (``garbage``/``truncated`` injections). ``malformed`` names the injected defect, ``None`` for
    good events.
    """

    topic_kind: TopicKind
    key: bytes
    record: dict[str, Any] | None
    value: bytes
    malformed: str | None = None

    @property
    def event_time(self) -> int | None:
        """Event time in epoch milliseconds (``None`` when the value does not decode)."""
        return None if self.record is None else self.record["event_time"]


@dataclass(frozen=True)
class GeneratorConfig:
    """Parameters of the synthetic world; the same values always give the same events.

    ``events`` counts every yielded event (created, updated, viewed, orders, injected bad ones).
    Catalogue and customer-base sizes grow with a store's share of events
    (``products_per_event``, ``customers_per_event``) up to ``max_products``/``max_customers``.
    """

    stores: int = 20
    events: int = 100_000
    seed: int = 0
    start_ms: int = 1_704_067_200_000  # 2024-01-01T00:00:00Z
    events_per_second: float = 1_000.0
    malformed_fraction: float = 0.0
    jitter_ms: int = 200
    store_skew: float = 1.2
    min_store_events: int = 5
    product_skew: float = 1.1
    customer_skew: float = 0.8
    products_per_event: float = 0.02
    max_products: int = 2_000
    customers_per_event: float = 0.08
    max_customers: int = 50_000
    uncategorised_fraction: float = 0.15
    initial_catalogue_share: float = 0.3
    order_share: float = 0.25
    update_share: float = 0.03
    anonymous_view_share: float = 0.2
    #: Injected drift (tests of the monitor): orders of store ``drift_store`` with an event time in
    #: ``[drift_from_ms, drift_until_ms)`` get their unit prices multiplied by
    #: ``drift_price_factor``. No random draw depends on it, so every other event stays the same.
    drift_store: str | None = None
    drift_from_ms: int = 0
    drift_until_ms: int = 2**62
    drift_price_factor: float = 1.0
    #: Share of ``updated`` events (dated ``late_category_from_ms`` or later) of an uncategorised
    #: product that publish its true category: a late categorisation, which the monitor uses to
    #: check the predicted categories. Draws a random number only when above 0.
    late_category_share: float = 0.0
    late_category_from_ms: int = 0

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(f"GeneratorConfig: {message}")

        need(self.stores >= 1, f"stores={self.stores} must be >= 1")
        need(self.min_store_events >= 1, f"min_store_events={self.min_store_events} must be >= 1")
        need(
            self.events >= self.stores * self.min_store_events,
            f"events={self.events} is too few for stores={self.stores} with"
            f" min_store_events={self.min_store_events}; raise events or lower the others",
        )
        need(self.events_per_second > 0, f"events_per_second={self.events_per_second} must be > 0")
        need(self.jitter_ms >= 0, f"jitter_ms={self.jitter_ms} must be >= 0")
        for name in (
            "malformed_fraction",
            "uncategorised_fraction",
            "late_category_share",
            "initial_catalogue_share",
            "order_share",
            "update_share",
            "anonymous_view_share",
        ):
            value = getattr(self, name)
            need(0.0 <= value <= 1.0, f"{name}={value} must be within [0, 1]")
        need(
            self.order_share + self.update_share <= 1.0,
            f"order_share + update_share = {self.order_share + self.update_share} must be <= 1"
            " (the rest are views)",
        )
        for name in ("store_skew", "product_skew", "customer_skew"):
            need(getattr(self, name) >= 0, f"{name}={getattr(self, name)} must be >= 0")
        for name in ("products_per_event", "customers_per_event"):
            need(getattr(self, name) > 0, f"{name}={getattr(self, name)} must be > 0")
        need(self.max_products >= 1, f"max_products={self.max_products} must be >= 1")
        need(self.max_customers >= 1, f"max_customers={self.max_customers} must be >= 1")
        need(
            self.drift_price_factor > 0, f"drift_price_factor={self.drift_price_factor} must be > 0"
        )


# --------------------------------------------------------------------------------------------
# The world: stores, catalogues, customers (drawn from the first child seed)
# --------------------------------------------------------------------------------------------


@dataclass
class _Store:
    store_id: str
    currency: str
    fx: float
    exponent: int
    slots: int
    products: list[Product]
    product_cum: list[float]  # cumulative popularity weights, in creation order
    customers: list[str]
    customer_cum: list[float]
    # mutable generation state
    prices: list[int] = field(default_factory=list)
    created_ms: list[int] = field(default_factory=list)
    seen_slots: int = 0
    orders: int = 0


def _cumulative(weights: np.ndarray) -> list[float]:
    return np.cumsum(weights).tolist()


def _zipf_weights(n: int, skew: float, rng: np.random.Generator) -> np.ndarray:
    """Weights 1/rank**skew, assigned to the n items in a random order."""
    ranks = rng.permutation(n) + 1
    return 1.0 / ranks.astype(np.float64) ** skew


def _store_ids(stores: int) -> list[str]:
    width = max(3, len(str(stores)))
    return [f"store-{k:0{width}d}" for k in range(1, stores + 1)]


def _price_minor(rng: np.random.Generator, category: str, fx: float, exponent: int) -> int:
    low, high = CATEGORIES[category].price_usd
    major = math.exp(rng.uniform(math.log(low), math.log(high))) * fx
    if exponent == 0:
        return max(10, int(round(major / 10.0)) * 10)
    scale = 10**exponent
    if major >= 5:
        return int(round(major)) * scale - 1  # charm pricing: 19.99
    return max(1, int(round(major * scale)))


def _text(rng: np.random.Generator, category: str) -> tuple[str, str]:
    spec = CATEGORIES[category]
    u = rng.random(16)
    noun = spec.nouns[int(u[0] * len(spec.nouns))]
    word = spec.words[int(u[1] * len(spec.words))]
    generic = _GENERIC_WORDS[int(u[2] * len(_GENERIC_WORDS))]
    brand = _BRANDS[int(u[3] * len(_BRANDS))]
    title = f"{brand} {generic} {word} {noun}"
    length = 8 + int(u[4] * 8)
    words: list[str] = [noun]
    draws = rng.random((length, 2))
    for a, b in draws:
        if a < 0.55:
            words.append(spec.words[int(b * len(spec.words))])
        elif a < 0.65:
            words.append(spec.nouns[int(b * len(spec.nouns))])
        elif a < 0.93:
            words.append(_GENERIC_WORDS[int(b * len(_GENERIC_WORDS))])
        else:  # cross-category noise, so the classifier has to weigh evidence
            other = CATEGORIES[_CATEGORY_NAMES[int(b * len(_CATEGORY_NAMES))]]
            words.append(other.words[int(a * 997) % len(other.words)])
    order = rng.permutation(len(words))
    description = " ".join(words[i] for i in order).capitalize() + "."
    return title, description


def _build_world(config: GeneratorConfig, rng: np.random.Generator) -> list[_Store]:
    ids = _store_ids(config.stores)
    # Power-law store sizes by rank; ranks are shuffled so store-001 is not always the biggest.
    share = _zipf_weights(config.stores, config.store_skew, rng)
    share /= share.sum()
    spare = config.events - config.stores * config.min_store_events
    slots = rng.multinomial(spare, share) + config.min_store_events
    codes = [c[0] for c in CURRENCIES]
    currency_p = np.array([c[1] for c in CURRENCIES])
    currency_idx = rng.choice(len(codes), size=config.stores, p=currency_p / currency_p.sum())
    stores: list[_Store] = []
    for k, store_id in enumerate(ids):
        n = int(slots[k])
        code, _, fx, exponent = CURRENCIES[int(currency_idx[k])]
        # At most half of a store's events announce products; at least a few products per store.
        most = min(config.max_products, max(1, n // 2))
        n_products = min(most, max(3, round(n * config.products_per_event)))
        n_customers = min(config.max_customers, max(1, round(n * config.customers_per_event)))
        # A store focuses on a few categories (its own mix), with a long tail of others.
        focus = rng.dirichlet(np.full(len(_CATEGORY_NAMES), 0.3))
        cats = rng.choice(len(_CATEGORY_NAMES), size=n_products, p=focus)
        uncategorised = rng.random(n_products) < config.uncategorised_fraction
        products: list[Product] = []
        for j in range(n_products):
            category = _CATEGORY_NAMES[int(cats[j])]
            title, description = _text(rng, category)
            products.append(
                Product(
                    store_id=store_id,
                    product_id=f"p{j + 1:05d}",
                    title=title,
                    description=description,
                    price_minor=_price_minor(rng, category, fx, exponent),
                    category=category,
                    listed_category=None if uncategorised[j] else category,
                )
            )
        customer_numbers = rng.permutation(n_customers) + 1
        stores.append(
            _Store(
                store_id=store_id,
                currency=code,
                fx=fx,
                exponent=exponent,
                slots=n,
                products=products,
                product_cum=_cumulative(_zipf_weights(n_products, config.product_skew, rng)),
                customers=[f"c{int(c):06d}" for c in customer_numbers],
                customer_cum=_cumulative(_zipf_weights(n_customers, config.customer_skew, rng)),
            )
        )
    return stores


def _rngs(config: GeneratorConfig) -> tuple[np.random.Generator, np.random.Generator]:
    world_seed, events_seed = np.random.SeedSequence(config.seed).spawn(2)
    return np.random.Generator(np.random.PCG64(world_seed)), np.random.Generator(
        np.random.PCG64(events_seed)
    )


def store_ids(config: GeneratorConfig) -> list[str]:
    """The store ids of ``config``'s world, in id order (``store-001``, ``store-002``, ...)."""
    return _store_ids(config.stores)


def catalogue(config: GeneratorConfig) -> dict[str, list[Product]]:
    """Every store's catalogue, as the ``created`` events of :func:`generate` announce it.

    All products are created during a run of :func:`generate`; prices may change later.
    """
    world_rng, _ = _rngs(config)
    return {store.store_id: store.products for store in _build_world(config, world_rng)}


# --------------------------------------------------------------------------------------------
# The event stream (drawn from the second child seed)
# --------------------------------------------------------------------------------------------


class _Uniforms:
    """Uniform [0, 1) floats drawn from ``rng`` in blocks (one numpy call per block)."""

    __slots__ = ("_rng", "_buffer", "_pos", "_block")

    def __init__(self, rng: np.random.Generator, block: int = 65_536) -> None:
        self._rng = rng
        self._block = block
        self._buffer: list[float] = []
        self._pos = 0

    def __call__(self) -> float:
        if self._pos >= len(self._buffer):
            self._buffer = self._rng.random(self._block).tolist()
            self._pos = 0
        value = self._buffer[self._pos]
        self._pos += 1
        return value


def _chunked(sequence: np.ndarray, size: int = 65_536) -> Iterator[int]:
    """The array's items as Python ints, converted a block at a time (no full-length list)."""
    for start in range(0, len(sequence), size):
        yield from sequence[start : start + size].tolist()


def _pick(cum: list[float], limit: int, u: float) -> int:
    """Index drawn with the weights of the first ``limit`` entries of the cumulative ``cum``."""
    index = bisect_right(cum, u * cum[limit - 1])
    return index if index < limit else limit - 1


_LINE_COUNTS = (0.55, 0.80, 0.92)  # cumulative: 1, 2, 3 lines; else 4
_QUANTITIES = (0.70, 0.90)  # cumulative: 1, 2; else 3
_CHANNEL_NAMES = tuple(c[0] for c in CHANNELS)
_CHANNEL_CUM = _cumulative(np.array([c[1] for c in CHANNELS]))


def _from_cum(cum: tuple[float, ...], u: float) -> int:
    for i, bound in enumerate(cum):
        if u < bound:
            return i
    return len(cum)


def generate(config: GeneratorConfig) -> Iterator[SyntheticEvent]:
    """Yield ``config.events`` events, identical (bytes included) for identical configs.

    Values are framed Avro (:func:`storeml.schemas.codec.get_codec`): ``order_event`` for the
    ``orders`` kind, ``product_event`` for ``products``. Keys are ``store_id|customer_id`` for
    orders and ``store_id|product_id`` for product events (UTF-8).
    """
    world_rng, rng = _rngs(config)
    stores = _build_world(config, world_rng)
    order_codec = get_codec("order_event")
    product_codec = get_codec("product_event")
    sequence = np.repeat(np.arange(len(stores), dtype=np.int32), [s.slots for s in stores])
    sequence = rng.permutation(sequence)
    u = _Uniforms(rng)
    ms_per_event = 1000.0 / config.events_per_second
    jitter = config.jitter_ms
    mal_fraction = config.malformed_fraction
    order_cut = config.order_share
    update_cut = config.order_share + config.update_share
    anonymous = config.anonymous_view_share
    for store in stores:
        store.prices = [p.price_minor for p in store.products]
        store.created_ms = []

    for i, k in enumerate(_chunked(sequence)):
        store = stores[k]
        t = store.seen_slots
        store.seen_slots += 1
        n_created = len(store.created_ms)
        n_products = len(store.products)
        event_ms = config.start_ms + int(i * ms_per_event)
        if jitter:
            event_ms += int((2.0 * u() - 1.0) * jitter)
        init = max(1, math.ceil(n_products * config.initial_catalogue_share))
        if n_created < n_products and (
            n_created < init or u() * (store.slots - t) < (n_products - n_created)
        ):
            product = store.products[n_created]
            store.created_ms.append(event_ms)
            record = _product_record(store, n_created, event_ms, "created", None)
            yield SyntheticEvent(
                "products",
                f"{store.store_id}|{product.product_id}".encode(),
                record,
                product_codec.encode(record),
            )
            continue

        bad = u() < mal_fraction if mal_fraction else False
        draw = u()
        if draw < order_cut:
            record = _order_record(store, n_created, event_ms, u)
            if (
                store.store_id == config.drift_store
                and config.drift_from_ms <= record["event_time"] < config.drift_until_ms
            ):
                for line in record["lines"]:
                    line["unit_price_minor"] = max(
                        0, int(round(line["unit_price_minor"] * config.drift_price_factor))
                    )
            key = f"{store.store_id}|{record['customer_id']}".encode()
            if bad:
                yield _malformed(record, "orders", key, u, rng)
            else:
                yield SyntheticEvent("orders", key, record, order_codec.encode(record))
            continue
        j = _pick(store.product_cum, n_created, u())
        event_ms = max(event_ms, store.created_ms[j] + 1)
        if draw < update_cut:
            old = store.prices[j]
            factor = 0.8 + 0.4 * u()
            new = max(1, int(round(old * factor)))
            if new == old:
                new = old + 1
            if not bad:
                store.prices[j] = new
            product = store.products[j]
            if (
                config.late_category_share
                and not bad
                and product.listed_category is None
                and event_ms >= config.late_category_from_ms
                and u() < config.late_category_share
            ):
                store.products[j] = replace(product, listed_category=product.category)
            record = _product_record(store, j, event_ms, "updated", None, price=new)
        else:
            customer = None
            if u() >= anonymous:
                customer = store.customers[_pick(store.customer_cum, len(store.customers), u())]
            record = _product_record(store, j, event_ms, "viewed", customer)
        key = f"{store.store_id}|{record['product_id']}".encode()
        if bad:
            yield _malformed(record, "products", key, u, rng)
        else:
            yield SyntheticEvent("products", key, record, product_codec.encode(record))


def _product_record(
    store: _Store,
    j: int,
    event_ms: int,
    kind: str,
    customer: str | None,
    price: int | None = None,
) -> dict[str, Any]:
    product = store.products[j]
    if kind == "viewed":
        return {
            "store_id": store.store_id,
            "product_id": product.product_id,
            "event_time": event_ms,
            "kind": kind,
            "title": None,
            "description": None,
            "price_minor": None,
            "category": None,
            "customer_id": customer,
        }
    return {
        "store_id": store.store_id,
        "product_id": product.product_id,
        "event_time": event_ms,
        "kind": kind,
        "title": product.title,
        "description": product.description,
        "price_minor": store.prices[j] if price is None else price,
        "category": product.listed_category,
        "customer_id": None,
    }


def _order_record(store: _Store, n_created: int, event_ms: int, u: _Uniforms) -> dict[str, Any]:
    customer = store.customers[_pick(store.customer_cum, len(store.customers), u())]
    n_lines = _from_cum(_LINE_COUNTS, u()) + 1
    seen: set[int] = set()
    lines: list[dict[str, Any]] = []
    for _ in range(n_lines):
        j = _pick(store.product_cum, n_created, u())
        quantity = _from_cum(_QUANTITIES, u()) + 1
        if j in seen:
            continue
        seen.add(j)
        event_ms = max(event_ms, store.created_ms[j] + 1)
        product = store.products[j]
        lines.append(
            {
                "product_id": product.product_id,
                "category": product.listed_category,
                "quantity": quantity,
                "unit_price_minor": store.prices[j],
            }
        )
    store.orders += 1
    return {
        "store_id": store.store_id,
        "customer_id": customer,
        "order_id": f"{store.store_id}-o{store.orders:07d}",
        "event_time": event_ms,
        "currency": store.currency,
        "lines": lines,
        "channel": _CHANNEL_NAMES[_pick(_CHANNEL_CUM, len(_CHANNEL_CUM), u())],
    }


def _malformed(
    record: dict[str, Any],
    topic_kind: TopicKind,
    key: bytes,
    u: _Uniforms,
    rng: np.random.Generator,
) -> SyntheticEvent:
    """Replace a good record by one of the :data:`MALFORMED_KINDS`."""
    codec = get_codec("order_event" if topic_kind == "orders" else "product_event")
    kinds = ["garbage", "truncated", "empty_store_id"]
    if topic_kind == "orders":
        kinds += ["quantity_zero", "negative_price"]
    elif record["kind"] == "updated":
        kinds.append("negative_price")
    kind = kinds[int(u() * len(kinds))]
    if kind == "garbage":
        size = 4 + int(u() * 60)
        data = bytearray(rng.bytes(size))
        if data[0] == 0xC3:  # never start like a framed message
            data[0] = 0x00
        return SyntheticEvent(topic_kind, key, None, bytes(data), kind)
    if kind == "truncated":
        full = codec.encode(record)
        body = len(full) - HEADER_SIZE
        cut = HEADER_SIZE + int(u() * body)
        while cut > HEADER_SIZE:  # keep the cut only where the body no longer decodes
            try:
                codec.decode(full[:cut])
            except CodecError:
                break
            cut = HEADER_SIZE + (cut - HEADER_SIZE) // 2
        return SyntheticEvent(topic_kind, key, None, full[:cut], kind)
    bad = dict(record)
    if kind == "empty_store_id":
        bad["store_id"] = ""
    elif kind == "quantity_zero":
        first = {**record["lines"][0], "quantity": 0}
        bad["lines"] = [first, *record["lines"][1:]]
    elif topic_kind == "orders":  # negative_price
        line = record["lines"][0]
        first = {**line, "unit_price_minor": -max(1, line["unit_price_minor"])}
        bad["lines"] = [first, *record["lines"][1:]]
    else:
        bad["price_minor"] = -max(1, record["price_minor"])
    return SyntheticEvent(topic_kind, key, bad, codec.encode(bad), kind)
