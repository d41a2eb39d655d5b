"""The synthetic three-service catalog: category trees, brands, titles, prices.

Each leaf category lists product nouns, variants and pack sizes; an item is
``brand + noun + variant + size`` with a price drawn around the leaf's range,
scaled by the brand's price level and the pack size. Items carry hidden
attributes (diet class, kids/baby/pet, health score, seasonality, repurchase
cycle) that the simulator's users react to; they are part of the ground
truth, not of the public item table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from userlayer.sdk.schemas import Service
from userlayer.tools.data.catalog_ru import russian_text

__all__ = ["LANGUAGES", "LEAVES", "CatalogItem", "Language", "Leaf", "make_catalog"]

Language = Literal["en", "ru"]
LANGUAGES: tuple[Language, ...] = ("en", "ru")


@dataclass(frozen=True)
class Leaf:
    """A leaf category and how to make its items."""

    group: str  # "grocery" (samokat and kuper) or "market" (megamarket)
    path: tuple[str, ...]
    nouns: tuple[str, ...]
    variants: tuple[str, ...]
    sizes: tuple[str, ...]
    price: tuple[float, float]  # rubles, typical range
    tags: frozenset[str] = frozenset()
    health: float = 0.5  # 0 = indulgent, 1 = healthy
    cycle_days: int = 0  # typical repurchase cycle; 0 = not a staple


def _split(s: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split("|"))


def _leaf(
    group: str,
    path: str,
    nouns: str,
    variants: str,
    sizes: str,
    price: tuple[float, float],
    tags: str = "",
    health: float = 0.5,
    cycle: int = 0,
) -> Leaf:
    return Leaf(
        group,
        _split(path.replace(" > ", "|")),
        _split(nouns),
        _split(variants),
        _split(sizes),
        price,
        frozenset(t for t in tags.split() if t),
        health,
        cycle,
    )


G, M = "grocery", "market"
LEAVES: tuple[Leaf, ...] = (
    # --- groceries (Samokat and Kuper) ---
    _leaf(
        G,
        "Dairy > Milk",
        "Milk|Baked Milk|Lactose-Free Milk|Kefir|Ryazhenka",
        "2.5%|3.2%|1.5%|Farm|Organic",
        "500 ml|930 ml|1 l|1.4 l",
        (70, 160),
        "staple",
        0.6,
        4,
    ),
    _leaf(
        G,
        "Dairy > Cheese & Curd",
        "Tvorog|Cheese Gouda|Cheese Russian|Mozzarella|Syrniki Mix",
        "5%|9%|Light|Classic|Smoked",
        "180 g|200 g|300 g|400 g",
        (90, 420),
        "",
        0.55,
        7,
    ),
    _leaf(
        G,
        "Dairy > Yogurt",
        "Yogurt|Greek Yogurt|Drinking Yogurt|Kids Curd Snack",
        "Strawberry|Natural|Peach|Blueberry|No Sugar",
        "90 g|130 g|270 g|400 g",
        (45, 150),
        "",
        0.6,
        5,
    ),
    _leaf(
        G,
        "Bakery > Bread",
        "Borodinsky Bread|White Loaf|Baguette|Whole Grain Bread|Lavash",
        "Sliced|Fresh|Rye|Seeded",
        "300 g|350 g|400 g|500 g",
        (45, 140),
        "staple",
        0.5,
        3,
    ),
    _leaf(
        G,
        "Bakery > Pastry",
        "Croissant|Cinnamon Bun|Eclair|Cheesecake|Medovik Cake",
        "Butter|Chocolate|Vanilla|Berry",
        "1 pc|2 pcs|4 pcs|500 g",
        (60, 650),
        "sweet ready",
        0.15,
    ),
    _leaf(
        G,
        "Meat > Poultry",
        "Chicken Breast|Chicken Thighs|Turkey Fillet|Chicken Wings",
        "Chilled|Marinated|Skinless|Farm",
        "500 g|700 g|1 kg",
        (220, 650),
        "meat",
        0.6,
        7,
    ),
    _leaf(
        G,
        "Meat > Beef & Pork",
        "Beef Steak|Minced Beef|Pork Neck|Pork Ribs|Minced Pork",
        "Chilled|Marbled|Lean|For Grill",
        "400 g|500 g|800 g|1 kg",
        (300, 1200),
        "meat",
        0.4,
    ),
    _leaf(
        G,
        "Meat > Sausages",
        "Doctor Sausage|Salami|Frankfurters|Ham|Bacon",
        "Classic|Smoked|Premium|Light",
        "250 g|300 g|450 g",
        (150, 520),
        "meat",
        0.2,
    ),
    _leaf(
        G,
        "Fish > Fresh & Frozen Fish",
        "Salmon Fillet|Cod Fillet|Trout Steak|Shrimps|Pollock",
        "Chilled|Frozen|Wild|Farmed",
        "300 g|500 g|1 kg",
        (300, 1500),
        "fish",
        0.8,
    ),
    _leaf(
        G,
        "Fish > Canned & Smoked",
        "Herring Fillet|Tuna|Sprats|Smoked Mackerel|Red Caviar",
        "in Oil|in Own Juice|Lightly Salted|Classic",
        "120 g|180 g|250 g",
        (120, 900),
        "fish",
        0.55,
    ),
    _leaf(
        G,
        "Produce > Vegetables",
        "Cucumbers|Tomatoes|Potatoes|Carrots|Broccoli|Bell Pepper",
        "Greenhouse|Local|Organic|Cherry|Young",
        "500 g|1 kg|2 kg|3 kg",
        (60, 320),
        "staple",
        0.9,
        6,
    ),
    _leaf(
        G,
        "Produce > Fruits",
        "Bananas|Apples Gala|Mandarins|Avocado|Pears|Grapes",
        "Ripe|Premium|Organic|Imported|Local",
        "500 g|1 kg|2 pcs|6 pcs",
        (80, 450),
        "staple",
        0.9,
        5,
    ),
    _leaf(
        G,
        "Produce > Greens & Salads",
        "Salad Mix|Arugula|Dill|Spinach|Parsley",
        "Fresh|Baby|Organic|Washed",
        "50 g|100 g|125 g|250 g",
        (60, 220),
        "",
        0.95,
    ),
    _leaf(
        G,
        "Ready Meals > Hot Dishes",
        "Chicken Curry|Beef Stroganoff|Pelmeni|Lasagna|Plov",
        "Classic|Spicy|Home-Style|Big Portion",
        "300 g|350 g|450 g",
        (190, 520),
        "ready meat",
        0.3,
    ),
    _leaf(
        G,
        "Ready Meals > Vegetarian Dishes",
        "Falafel Bowl|Vegetable Curry|Buckwheat Bowl|Mushroom Risotto|Syrniki",
        "Classic|Vegan|Spicy|Light",
        "250 g|300 g|400 g",
        (170, 450),
        "ready",
        0.55,
    ),
    _leaf(
        G,
        "Ready Meals > Salads & Sandwiches",
        "Caesar Salad|Olivier Salad|Club Sandwich|Shawarma|Poke Bowl|Greek Salad",
        "Chicken|Tuna|Veggie|Salmon|Classic",
        "180 g|220 g|300 g",
        (150, 480),
        "ready",
        0.45,
    ),
    _leaf(
        G,
        "Ready Meals > Pizza",
        "Pizza Margherita|Pizza Pepperoni|Pizza Four Cheese|Pizza Hawaiian",
        "Thin|Classic|Large|Frozen",
        "400 g|550 g|30 cm",
        (290, 690),
        "ready",
        0.1,
    ),
    _leaf(
        G,
        "Snacks > Chips & Nuts",
        "Potato Chips|Tortilla Chips|Salted Peanuts|Cashews|Pistachios|Croutons",
        "Sour Cream & Onion|Paprika|Salt|Cheese|Roasted",
        "70 g|120 g|150 g|300 g",
        (70, 450),
        "snack",
        0.1,
    ),
    _leaf(
        G,
        "Snacks > Chocolate & Sweets",
        "Milk Chocolate|Dark Chocolate|Candy Box|Wafers|Zefir|Chocolate Bar",
        "Hazelnut|Classic|70% Cocoa|Caramel|Vanilla",
        "45 g|90 g|200 g|300 g",
        (60, 650),
        "snack sweet",
        0.05,
    ),
    _leaf(
        G,
        "Snacks > Healthy Snacks",
        "Protein Bar|Granola|Dried Fruit Mix|Fruit Chips|Rice Cakes",
        "No Sugar|Berry|Nut|Coconut|Oat",
        "40 g|150 g|300 g",
        (80, 420),
        "snack healthy",
        0.85,
    ),
    _leaf(
        G,
        "Drinks > Soft Drinks",
        "Cola|Lemonade|Iced Tea|Energy Drink|Kvas",
        "Classic|Zero|Lemon|Peach|Original",
        "0.33 l|0.5 l|1 l|1.5 l",
        (60, 190),
        "drink",
        0.1,
    ),
    _leaf(
        G,
        "Drinks > Water & Juice",
        "Mineral Water|Still Water|Orange Juice|Apple Juice|Tomato Juice|Kombucha",
        "Sparkling|Still|Fresh|Direct Pressed|No Sugar",
        "0.5 l|1 l|1.5 l|5 l",
        (40, 320),
        "drink staple",
        0.75,
        6,
    ),
    _leaf(
        G,
        "Drinks > Coffee & Tea",
        "Ground Coffee|Coffee Beans|Instant Coffee|Black Tea|Green Tea|Cold Brew",
        "Arabica|Espresso|Earl Grey|Sencha|Classic",
        "20 pcs|100 g|250 g|1 kg",
        (150, 1500),
        "staple",
        0.5,
        21,
    ),
    _leaf(
        G,
        "Pantry > Pasta & Grains",
        "Spaghetti|Penne|Buckwheat|Basmati Rice|Oat Flakes|Bulgur",
        "Durum|Whole Grain|Premium|Quick Cook",
        "400 g|500 g|900 g|1 kg",
        (60, 260),
        "staple",
        0.6,
        14,
    ),
    _leaf(
        G,
        "Pantry > Canned & Sauces",
        "Canned Corn|Green Peas|Chickpeas|Tomato Paste|Ketchup|Mayonnaise|Sunflower Oil",
        "Classic|Organic|Light|Extra Virgin",
        "200 g|400 g|500 ml|1 l",
        (60, 420),
        "",
        0.4,
    ),
    _leaf(
        G,
        "Pantry > Eggs",
        "Eggs C1|Eggs C0|Quail Eggs|Free-Range Eggs",
        "Farm|Select|Organic",
        "10 pcs|20 pcs|30 pcs",
        (90, 350),
        "staple",
        0.7,
        7,
    ),
    _leaf(
        G,
        "Baby > Baby Food",
        "Fruit Puree|Vegetable Puree|Baby Porridge|Infant Formula|Baby Biscuits",
        "Apple|Pumpkin|Buckwheat|Stage 1|Stage 2",
        "90 g|200 g|400 g|800 g",
        (50, 1400),
        "baby staple",
        0.8,
        6,
    ),
    _leaf(
        G,
        "Baby > Diapers",
        "Diapers|Pull-Up Pants|Baby Wipes",
        "Size 2|Size 3|Size 4|Size 5|Sensitive",
        "24 pcs|52 pcs|64 pcs|120 pcs",
        (250, 1900),
        "baby staple",
        0.5,
        12,
    ),
    _leaf(
        G,
        "Pets > Dog Food",
        "Dry Dog Food|Wet Dog Food|Dog Treats",
        "Chicken|Beef|Lamb|Puppy",
        "85 g|400 g|2 kg|10 kg",
        (60, 3500),
        "pet_dog staple",
        0.5,
        14,
    ),
    _leaf(
        G,
        "Pets > Cat Food",
        "Dry Cat Food|Wet Cat Food|Cat Treats|Cat Litter",
        "Salmon|Chicken|Sterilised|Kitten",
        "85 g|400 g|1.5 kg|5 kg",
        (40, 2200),
        "pet_cat staple",
        0.5,
        10,
    ),
    _leaf(
        G,
        "Household > Cleaning",
        "Dish Soap|Laundry Gel|Floor Cleaner|Paper Towels|Toilet Paper|Trash Bags",
        "Lemon|Sensitive|Eco|Extra Strong",
        "500 ml|1 l|4 rolls|8 rolls|30 pcs",
        (90, 900),
        "staple",
        0.5,
        20,
    ),
    _leaf(
        G,
        "Frozen > Ice Cream & Frozen",
        "Ice Cream Plombir|Ice Cream Cone|Frozen Berries|Frozen Vegetables|Vareniki",
        "Vanilla|Chocolate|Mixed|Cherry|Classic",
        "80 g|400 g|450 g|1 kg",
        (60, 480),
        "sweet summer",
        0.35,
    ),
    # --- marketplace (Megamarket) ---
    _leaf(
        M,
        "Electronics > Smartphones",
        "Smartphone|Smartphone Pro|Smartphone Lite",
        "128 GB|256 GB|512 GB|5G",
        "Black|Blue|Silver|Green",
        (9000, 120000),
        "",
        0.5,
    ),
    _leaf(
        M,
        "Electronics > Audio",
        "Wireless Earbuds|Headphones|Bluetooth Speaker|Soundbar",
        "ANC|Sport|Mini|Pro",
        "Black|White|Blue",
        (1500, 35000),
        "",
        0.5,
    ),
    _leaf(
        M,
        "Electronics > Computers",
        'Laptop|Monitor 27"|Keyboard|Mouse|Tablet',
        "Office|Gaming|Ultra|Wireless",
        "Gray|Black|Silver",
        (900, 150000),
        "",
        0.5,
    ),
    _leaf(
        M,
        "Electronics > Accessories",
        "USB-C Charger|Power Bank|Phone Case|Smart Watch|HDMI Cable",
        "65 W|20000 mAh|Silicone|Sport|2 m",
        "Black|White|Red",
        (300, 25000),
        "",
        0.5,
    ),
    _leaf(
        M,
        "Home > Kitchen",
        "Frying Pan|Cookware Set|Electric Kettle|Blender|Coffee Machine",
        "Non-Stick|Steel|Glass|Compact",
        "24 cm|1.7 l|5 pcs|Standard",
        (700, 45000),
        "",
        0.5,
    ),
    _leaf(
        M,
        "Home > Bedding & Textiles",
        "Bed Linen Set|Blanket|Pillow|Towel Set|Curtains",
        "Cotton|Satin|Linen|Warm",
        "Single|Double|Euro|70x140",
        (600, 9000),
        "",
        0.5,
    ),
    _leaf(
        M,
        "Home > Appliances",
        "Robot Vacuum|Air Humidifier|Heater|Fan|Iron",
        "Smart|Compact|Quiet|Steam",
        "Standard|Pro|Max",
        (1200, 60000),
        "",
        0.5,
    ),
    _leaf(
        M,
        "Clothing > Outerwear",
        "Down Jacket|Parka|Wool Coat|Windbreaker|Raincoat",
        "Men|Women|Hooded|Waterproof",
        "S|M|L|XL",
        (3500, 30000),
        "winter",
        0.5,
    ),
    _leaf(
        M,
        "Clothing > Everyday",
        "T-Shirt|Jeans|Hoodie|Sweater|Dress|Sneakers",
        "Men|Women|Oversize|Slim|Cotton",
        "S|M|L|XL|40|42",
        (700, 12000),
        "",
        0.5,
    ),
    _leaf(
        M,
        "Clothing > Summer",
        "Swimsuit|Shorts|Sandals|Sun Hat|Linen Shirt",
        "Men|Women|Beach|Light",
        "S|M|L|XL",
        (600, 6000),
        "summer",
        0.5,
    ),
    _leaf(
        M,
        "Kids > Toys",
        "LEGO Set|Doll|Toy Car|Board Game|Plush Bear|Puzzle",
        "Classic|City|Creative|Educational",
        "3+|5+|8+|12+",
        (400, 15000),
        "kids",
        0.5,
    ),
    _leaf(
        M,
        "Kids > Kids Clothing",
        "Kids Jacket|Kids Sneakers|School Uniform|Kids Pajamas|Kids Overalls",
        "Boys|Girls|Warm|Light",
        "98|110|122|134",
        (800, 9000),
        "kids",
        0.5,
    ),
    _leaf(
        M,
        "Kids > Baby Gear",
        "Stroller|Car Seat|High Chair|Baby Monitor|Baby Bottle Set",
        "Travel|Convertible|Compact|Smart",
        "0+|6m+|Standard",
        (900, 60000),
        "kids",
        0.5,
    ),
    _leaf(
        M,
        "Beauty > Skincare",
        "Face Cream|Serum|Cleansing Gel|Sunscreen SPF50|Face Mask",
        "Hyaluronic|Vitamin C|Sensitive|Anti-Age",
        "30 ml|50 ml|150 ml|5 pcs",
        (300, 6000),
        "healthy",
        0.7,
    ),
    _leaf(
        M,
        "Beauty > Hair & Body",
        "Shampoo|Conditioner|Shower Gel|Hair Dryer|Body Lotion",
        "Repair|Volume|Coconut|Sensitive",
        "250 ml|400 ml|1 pc",
        (250, 9000),
        "",
        0.5,
    ),
    _leaf(
        M,
        "Beauty > Makeup & Perfume",
        "Mascara|Lipstick|Foundation|Eau de Parfum|Eyeshadow Palette",
        "Matte|Nude|Waterproof|Floral",
        "1 pc|30 ml|50 ml|100 ml",
        (350, 14000),
        "",
        0.5,
    ),
    _leaf(
        M,
        "Sports > Fitness",
        "Yoga Mat|Dumbbells|Resistance Bands|Protein Powder|Fitness Tracker",
        "Pro|Home|Vanilla|Adjustable",
        "1 pc|2 kg|5 kg|900 g",
        (500, 15000),
        "healthy",
        0.9,
    ),
    _leaf(
        M,
        "Sports > Outdoor",
        "Bicycle|Tent|Skis|Snowboard|Trekking Poles|Sleeping Bag",
        "Mountain|City|Winter|Summer|Ultralight",
        "S|M|L|2p|4p",
        (1500, 70000),
        "",
        0.8,
    ),
    _leaf(
        M,
        "Garden > Garden & Dacha",
        "Garden Hose|Grill|Seedlings Kit|Garden Chair|Lawn Mower",
        "Folding|Charcoal|Electric|Tomato",
        "15 m|Standard|Set",
        (400, 30000),
        "summer",
        0.6,
    ),
)

_BRANDS: dict[str, tuple[str, ...]] = {
    "Dairy": (
        "Prostokvashino",
        "Domik v Derevne",
        "Valio",
        "Savushkin",
        "Ekoniva",
        "Vkusnoteevo",
        "Danone",
        "Ehrmann",
    ),
    "Bakery": ("Kharris", "Kolomenskoe", "Khlebny Dom", "Fazer", "Pekarnya Samokat", "Brioche"),
    "Meat": ("Miratorg", "Cherkizovo", "Petelinka", "Velikoluksky", "Indilight", "Primebeef"),
    "Fish": ("Russkoe More", "Meridian", "Santa Bremor", "Fish House", "Dalmoreproduct"),
    "Produce": ("Fresh Field", "Global Village", "Ogorodnik", "Eco Farm", "Sady Pridonya"),
    "Ready Meals": (
        "Samokat Kitchen",
        "Shef Kuper",
        "Obed Bufet",
        "Delicatessen Lab",
        "Vkusvill Style",
    ),
    "Snacks": (
        "Lays",
        "Pringles",
        "Khrusteam",
        "Alpen Gold",
        "Babaevsky",
        "Krasny Oktyabr",
        "Bite",
        "Fitness Bar",
    ),
    "Drinks": (
        "Dobry",
        "Rich",
        "Borjomi",
        "Svyatoy Istochnik",
        "Jardin",
        "Greenfield",
        "Tassay",
        "Ochakovo",
    ),
    "Pantry": ("Makfa", "Mistral", "Barilla", "Uvelka", "Heinz", "Sloboda", "Bonduelle"),
    "Baby": ("FrutoNyanya", "Agusha", "Gerber", "Pampers", "Huggies", "Nutrilon"),
    "Pets": ("Purina One", "Whiskas", "Royal Canin", "Pedigree", "Felix"),
    "Household": ("Fairy", "Persil", "Synergetic", "Zewa", "Mister Proper"),
    "Frozen": ("Inmarko", "Chistaya Liniya", "Hortex", "Sibirskaya Kollektsiya"),
    "Electronics": (
        "Samsung",
        "Xiaomi",
        "Apple",
        "Honor",
        "Realme",
        "JBL",
        "Sony",
        "Lenovo",
        "ASUS",
        "Baseus",
    ),
    "Home": ("Tefal", "Bosch", "Philips", "Polaris", "Redmond", "Togas", "IKEA Style", "Dyson"),
    "Clothing": ("Gloria Jeans", "Zarina", "Befree", "Sela", "Ostin", "Termit", "Nike", "Adidas"),
    "Kids": ("LEGO", "Hasbro", "Mattel", "Chicco", "Happy Baby", "Crockid", "Reima"),
    "Beauty": (
        "Natura Siberica",
        "La Roche-Posay",
        "Garnier",
        "Loreal",
        "Vichy",
        "Maybelline",
        "Nivea",
        "Chanel",
    ),
    "Sports": ("Demix", "Decathlon Style", "Stern", "Nordway", "Torneo", "Garmin"),
    "Garden": ("Park", "Gardena", "Grinda", "Greenworks", "Dacha Pro"),
}

# Items per leaf for each service: Samokat is strong in ready food and snacks,
# Kuper in planned groceries, Megamarket carries the marketplace tree.
_SAMOKAT_BOOST = {
    "Ready Meals": 2.0,
    "Snacks": 1.6,
    "Drinks": 1.5,
    "Bakery": 1.3,
    "Pets": 0.6,
    "Household": 0.6,
    "Meat": 0.7,
    "Fish": 0.6,
}
_KUPER_BOOST = {
    "Ready Meals": 0.6,
    "Snacks": 0.8,
    "Meat": 1.5,
    "Fish": 1.4,
    "Pantry": 1.6,
    "Household": 1.5,
    "Produce": 1.4,
    "Baby": 1.3,
}


@dataclass(frozen=True)
class CatalogItem:
    """An item with its hidden attributes (ground truth for the simulator)."""

    item_id: str
    service: Service
    title: str
    category: tuple[str, ...]
    brand: str
    price: float
    leaf: int  # index into LEAVES
    brand_level: float  # price level of the brand, ~1
    health: float
    tags: frozenset[str]
    cycle_days: int
    # the same title and category path as the Russian-language services show them
    ru_title: str = ""
    ru_category: tuple[str, ...] = ()

    def text(self, language: Language) -> tuple[str, tuple[str, ...]]:
        """The public title and category path in ``language``."""
        if language == "ru":
            return self.ru_title, self.ru_category
        return self.title, self.category


def _service_leaves(service: Service) -> list[tuple[int, float]]:
    group = G if service is not Service.MEGAMARKET else M
    boost = {Service.SAMOKAT: _SAMOKAT_BOOST, Service.KUPER: _KUPER_BOOST}.get(service, {})
    return [
        (i, boost.get(leaf.path[0], 1.0)) for i, leaf in enumerate(LEAVES) if leaf.group == group
    ]


def make_catalog(
    rng: np.random.Generator, items_per_service: dict[Service, int]
) -> list[CatalogItem]:
    """Generate the catalog: unique titles within a service, unique ids overall."""
    brand_level = {b: float(rng.lognormal(0.0, 0.25)) for bs in _BRANDS.values() for b in bs}
    prefix = {Service.SAMOKAT: "sm", Service.MEGAMARKET: "mm", Service.KUPER: "kp"}
    items: list[CatalogItem] = []
    for service, total in items_per_service.items():
        leaves = _service_leaves(service)
        weights = np.array([w for _, w in leaves])
        counts = np.maximum(1, np.round(weights / weights.sum() * total)).astype(int)
        titles: set[str] = set()
        for (leaf_idx, _), n in zip(leaves, counts, strict=True):
            leaf = LEAVES[leaf_idx]
            brands = _BRANDS[leaf.path[0]]
            made, tries = 0, 0
            while made < n and tries < 50 * n:
                tries += 1
                brand = brands[rng.integers(len(brands))]
                noun = leaf.nouns[rng.integers(len(leaf.nouns))]
                variant = leaf.variants[rng.integers(len(leaf.variants))]
                size_idx = int(rng.integers(len(leaf.sizes)))
                title = f"{brand} {noun} {variant}, {leaf.sizes[size_idx]}"
                if title in titles:
                    continue
                titles.add(title)
                lo, hi = leaf.price
                size_factor = 1.0 + 0.35 * size_idx
                price = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
                price = round(price * brand_level[brand] * size_factor / 10) * 10 - 0.01
                health = float(
                    np.clip(
                        leaf.health
                        + rng.normal(0, 0.1)
                        + (
                            0.15
                            if variant in ("Organic", "No Sugar", "Light", "Whole Grain", "Lean")
                            else 0.0
                        ),
                        0,
                        1,
                    )
                )
                category = (*leaf.path, noun)
                ru_title, ru_category = russian_text(
                    leaf.path, noun, brand, variant, leaf.sizes[size_idx]
                )
                items.append(
                    CatalogItem(
                        item_id=f"{prefix[service]}-{len(items):05d}",
                        service=service,
                        title=title,
                        category=category,
                        brand=brand,
                        price=max(price, 9.99),
                        leaf=leaf_idx,
                        brand_level=brand_level[brand],
                        health=health,
                        tags=leaf.tags,
                        cycle_days=leaf.cycle_days,
                        ru_title=ru_title,
                        ru_category=ru_category,
                    )
                )
                made += 1
    return items
