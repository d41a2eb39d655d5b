"""Russian titles and category paths for the synthetic catalog, as the services show them.

The three services' catalogs are Russian: ``Молоко Простоквашино 3,2%, 930 мл``.
:func:`russian_text` renders an item's public title and category path in
Russian from the same leaf, noun, variant and size the English catalog drew,
so both languages describe the same items with the same hidden attributes
(the simulator's users react to those, not to the words). Word order follows
Russian shop listings (noun, brand, variant, size), decimals take a comma,
and units are Russian. Brands keep their Latin spelling, as many listings do.
"""

from __future__ import annotations

import re

__all__ = ["NOUNS", "PATHS", "SIZES", "VARIANTS", "russian_size", "russian_text"]

# fmt: off
PATHS: dict[str, str] = {
    "Dairy": "Молочные продукты", "Milk": "Молоко", "Cheese & Curd": "Сыр и творог",
    "Yogurt": "Йогурт", "Bakery": "Хлеб и выпечка", "Bread": "Хлеб", "Pastry": "Выпечка",
    "Meat": "Мясо", "Poultry": "Птица", "Beef & Pork": "Говядина и свинина",
    "Sausages": "Колбасы и сосиски", "Fish": "Рыба",
    "Fresh & Frozen Fish": "Свежая и мороженая рыба",
    "Canned & Smoked": "Консервы и копчёности", "Produce": "Овощи и фрукты", "Vegetables": "Овощи",
    "Fruits": "Фрукты", "Greens & Salads": "Зелень и салаты", "Ready Meals": "Готовая еда",
    "Hot Dishes": "Горячие блюда", "Vegetarian Dishes": "Вегетарианские блюда",
    "Salads & Sandwiches": "Салаты и сэндвичи", "Pizza": "Пицца", "Snacks": "Снеки и сладости",
    "Chips & Nuts": "Чипсы и орехи", "Chocolate & Sweets": "Шоколад и конфеты",
    "Healthy Snacks": "Полезные перекусы", "Drinks": "Напитки",
    "Soft Drinks": "Газированные напитки", "Water & Juice": "Вода и соки",
    "Coffee & Tea": "Кофе и чай", "Pantry": "Бакалея", "Pasta & Grains": "Макароны и крупы",
    "Canned & Sauces": "Консервы и соусы", "Eggs": "Яйца", "Baby": "Детские товары",
    "Baby Food": "Детское питание", "Diapers": "Подгузники", "Pets": "Зоотовары",
    "Dog Food": "Корм для собак", "Cat Food": "Корм для кошек", "Household": "Бытовая химия",
    "Cleaning": "Уборка", "Frozen": "Замороженные продукты",
    "Ice Cream & Frozen": "Мороженое и заморозка", "Electronics": "Электроника",
    "Smartphones": "Смартфоны", "Audio": "Аудиотехника", "Computers": "Компьютеры",
    "Accessories": "Аксессуары", "Home": "Дом", "Kitchen": "Кухня",
    "Bedding & Textiles": "Постельное бельё и текстиль", "Appliances": "Бытовая техника",
    "Clothing": "Одежда", "Outerwear": "Верхняя одежда", "Everyday": "Повседневная одежда",
    "Summer": "Летняя одежда", "Kids": "Детям", "Toys": "Игрушки",
    "Kids Clothing": "Детская одежда", "Baby Gear": "Товары для малышей", "Beauty": "Красота",
    "Skincare": "Уход за кожей", "Hair & Body": "Уход за волосами и телом",
    "Makeup & Perfume": "Макияж и парфюмерия", "Sports": "Спорт", "Fitness": "Фитнес",
    "Outdoor": "Туризм", "Garden": "Сад", "Garden & Dacha": "Сад и дача",
}
NOUNS: dict[str, str] = {
    "Milk": "Молоко", "Diapers": "Подгузники", "Yogurt": "Йогурт",
    "Baked Milk": "Топлёное молоко", "Lactose-Free Milk": "Безлактозное молоко",
    "Kefir": "Кефир", "Ryazhenka": "Ряженка", "Tvorog": "Творог", "Cheese Gouda": "Сыр гауда",
    "Cheese Russian": "Сыр российский", "Mozzarella": "Моцарелла",
    "Syrniki Mix": "Смесь для сырников", "Greek Yogurt": "Греческий йогурт",
    "Drinking Yogurt": "Питьевой йогурт", "Kids Curd Snack": "Детский творожок",
    "Borodinsky Bread": "Хлеб бородинский", "White Loaf": "Батон белый", "Baguette": "Багет",
    "Whole Grain Bread": "Хлеб цельнозерновой", "Lavash": "Лаваш", "Croissant": "Круассан",
    "Cinnamon Bun": "Булочка с корицей", "Eclair": "Эклер", "Cheesecake": "Чизкейк",
    "Medovik Cake": "Торт медовик", "Chicken Breast": "Куриная грудка",
    "Chicken Thighs": "Куриные бёдра", "Turkey Fillet": "Филе индейки",
    "Chicken Wings": "Куриные крылья", "Beef Steak": "Стейк говяжий",
    "Minced Beef": "Фарш говяжий", "Pork Neck": "Свиная шея", "Pork Ribs": "Свиные рёбра",
    "Minced Pork": "Фарш свиной", "Doctor Sausage": "Колбаса докторская", "Salami": "Салями",
    "Frankfurters": "Сосиски", "Ham": "Ветчина", "Bacon": "Бекон",
    "Salmon Fillet": "Филе лосося", "Cod Fillet": "Филе трески", "Trout Steak": "Стейк форели",
    "Shrimps": "Креветки", "Pollock": "Минтай", "Herring Fillet": "Филе сельди",
    "Tuna": "Тунец", "Sprats": "Шпроты", "Smoked Mackerel": "Скумбрия копчёная",
    "Red Caviar": "Икра красная", "Cucumbers": "Огурцы", "Tomatoes": "Помидоры",
    "Potatoes": "Картофель", "Carrots": "Морковь", "Broccoli": "Брокколи",
    "Bell Pepper": "Перец болгарский", "Bananas": "Бананы", "Apples Gala": "Яблоки гала",
    "Mandarins": "Мандарины", "Avocado": "Авокадо", "Pears": "Груши", "Grapes": "Виноград",
    "Salad Mix": "Салатная смесь", "Arugula": "Руккола", "Dill": "Укроп", "Spinach": "Шпинат",
    "Parsley": "Петрушка", "Chicken Curry": "Курица карри", "Beef Stroganoff": "Бефстроганов",
    "Pelmeni": "Пельмени", "Lasagna": "Лазанья", "Plov": "Плов", "Falafel Bowl": "Боул с фалафелем",
    "Vegetable Curry": "Овощное карри", "Buckwheat Bowl": "Боул с гречкой",
    "Mushroom Risotto": "Ризотто с грибами", "Syrniki": "Сырники", "Caesar Salad": "Салат цезарь",
    "Olivier Salad": "Салат оливье", "Club Sandwich": "Клаб-сэндвич", "Shawarma": "Шаурма",
    "Poke Bowl": "Поке", "Greek Salad": "Салат греческий", "Pizza Margherita": "Пицца маргарита",
    "Pizza Pepperoni": "Пицца пепперони", "Pizza Four Cheese": "Пицца четыре сыра",
    "Pizza Hawaiian": "Пицца гавайская", "Potato Chips": "Чипсы картофельные",
    "Tortilla Chips": "Чипсы кукурузные", "Salted Peanuts": "Арахис солёный", "Cashews": "Кешью",
    "Pistachios": "Фисташки", "Croutons": "Сухарики", "Milk Chocolate": "Шоколад молочный",
    "Dark Chocolate": "Шоколад горький", "Candy Box": "Конфеты в коробке", "Wafers": "Вафли",
    "Zefir": "Зефир", "Chocolate Bar": "Шоколадный батончик",
    "Protein Bar": "Протеиновый батончик", "Granola": "Гранола",
    "Dried Fruit Mix": "Смесь сухофруктов", "Fruit Chips": "Фруктовые чипсы",
    "Rice Cakes": "Хлебцы рисовые", "Cola": "Кола", "Lemonade": "Лимонад",
    "Iced Tea": "Холодный чай", "Energy Drink": "Энергетик", "Kvas": "Квас",
    "Mineral Water": "Минеральная вода", "Still Water": "Вода питьевая",
    "Orange Juice": "Сок апельсиновый", "Apple Juice": "Сок яблочный",
    "Tomato Juice": "Сок томатный", "Kombucha": "Комбуча", "Ground Coffee": "Кофе молотый",
    "Coffee Beans": "Кофе в зёрнах", "Instant Coffee": "Кофе растворимый",
    "Black Tea": "Чай чёрный", "Green Tea": "Чай зелёный", "Cold Brew": "Колд брю",
    "Spaghetti": "Спагетти", "Penne": "Пенне", "Buckwheat": "Гречка", "Basmati Rice": "Рис басмати",
    "Oat Flakes": "Овсяные хлопья", "Bulgur": "Булгур", "Canned Corn": "Кукуруза консервированная",
    "Green Peas": "Зелёный горошек", "Chickpeas": "Нут", "Tomato Paste": "Томатная паста",
    "Ketchup": "Кетчуп", "Mayonnaise": "Майонез", "Sunflower Oil": "Масло подсолнечное",
    "Eggs C1": "Яйца С1", "Eggs C0": "Яйца С0", "Quail Eggs": "Яйца перепелиные",
    "Free-Range Eggs": "Яйца деревенские", "Fruit Puree": "Пюре фруктовое",
    "Vegetable Puree": "Пюре овощное", "Baby Porridge": "Каша детская",
    "Infant Formula": "Детская смесь", "Baby Biscuits": "Печенье детское",
    "Pull-Up Pants": "Трусики-подгузники", "Baby Wipes": "Влажные салфетки детские",
    "Dry Dog Food": "Сухой корм для собак", "Wet Dog Food": "Влажный корм для собак",
    "Dog Treats": "Лакомство для собак", "Dry Cat Food": "Сухой корм для кошек",
    "Wet Cat Food": "Влажный корм для кошек", "Cat Treats": "Лакомство для кошек",
    "Cat Litter": "Наполнитель для кошачьего туалета", "Dish Soap": "Средство для мытья посуды",
    "Laundry Gel": "Гель для стирки", "Floor Cleaner": "Средство для мытья полов",
    "Paper Towels": "Бумажные полотенца", "Toilet Paper": "Туалетная бумага",
    "Trash Bags": "Мешки для мусора", "Ice Cream Plombir": "Мороженое пломбир",
    "Ice Cream Cone": "Мороженое рожок", "Frozen Berries": "Ягоды замороженные",
    "Frozen Vegetables": "Овощи замороженные", "Vareniki": "Вареники", "Smartphone": "Смартфон",
    "Smartphone Pro": "Смартфон Pro", "Smartphone Lite": "Смартфон Lite",
    "Wireless Earbuds": "Беспроводные наушники", "Headphones": "Наушники",
    "Bluetooth Speaker": "Bluetooth-колонка", "Soundbar": "Саундбар", "Laptop": "Ноутбук",
    'Monitor 27"': 'Монитор 27"', "Keyboard": "Клавиатура", "Mouse": "Мышь", "Tablet": "Планшет",
    "USB-C Charger": "Зарядное устройство USB-C", "Power Bank": "Внешний аккумулятор",
    "Phone Case": "Чехол для телефона", "Smart Watch": "Умные часы", "HDMI Cable": "Кабель HDMI",
    "Frying Pan": "Сковорода", "Cookware Set": "Набор посуды", "Electric Kettle": "Электрочайник",
    "Blender": "Блендер", "Coffee Machine": "Кофемашина",
    "Bed Linen Set": "Комплект постельного белья", "Blanket": "Одеяло", "Pillow": "Подушка",
    "Towel Set": "Набор полотенец", "Curtains": "Шторы", "Robot Vacuum": "Робот-пылесос",
    "Air Humidifier": "Увлажнитель воздуха", "Heater": "Обогреватель", "Fan": "Вентилятор",
    "Iron": "Утюг", "Down Jacket": "Пуховик", "Parka": "Парка", "Wool Coat": "Пальто шерстяное",
    "Windbreaker": "Ветровка", "Raincoat": "Дождевик", "T-Shirt": "Футболка", "Jeans": "Джинсы",
    "Hoodie": "Худи", "Sweater": "Свитер", "Dress": "Платье", "Sneakers": "Кроссовки",
    "Swimsuit": "Купальник", "Shorts": "Шорты", "Sandals": "Сандалии", "Sun Hat": "Панама",
    "Linen Shirt": "Льняная рубашка", "LEGO Set": "Конструктор LEGO", "Doll": "Кукла",
    "Toy Car": "Машинка", "Board Game": "Настольная игра", "Plush Bear": "Плюшевый мишка",
    "Puzzle": "Пазл", "Kids Jacket": "Куртка детская", "Kids Sneakers": "Кроссовки детские",
    "School Uniform": "Школьная форма", "Kids Pajamas": "Пижама детская",
    "Kids Overalls": "Комбинезон детский", "Stroller": "Коляска", "Car Seat": "Автокресло",
    "High Chair": "Стульчик для кормления", "Baby Monitor": "Радионяня",
    "Baby Bottle Set": "Набор бутылочек", "Face Cream": "Крем для лица", "Serum": "Сыворотка",
    "Cleansing Gel": "Гель для умывания", "Sunscreen SPF50": "Солнцезащитный крем SPF50",
    "Face Mask": "Маска для лица", "Shampoo": "Шампунь", "Conditioner": "Бальзам для волос",
    "Shower Gel": "Гель для душа", "Hair Dryer": "Фен", "Body Lotion": "Лосьон для тела",
    "Mascara": "Тушь для ресниц", "Lipstick": "Помада", "Foundation": "Тональный крем",
    "Eau de Parfum": "Парфюмерная вода", "Eyeshadow Palette": "Палетка теней",
    "Yoga Mat": "Коврик для йоги", "Dumbbells": "Гантели", "Resistance Bands": "Фитнес-резинки",
    "Protein Powder": "Протеин", "Fitness Tracker": "Фитнес-браслет", "Bicycle": "Велосипед",
    "Tent": "Палатка", "Skis": "Лыжи", "Snowboard": "Сноуборд",
    "Trekking Poles": "Треккинговые палки",
    "Sleeping Bag": "Спальный мешок", "Garden Hose": "Садовый шланг", "Grill": "Гриль",
    "Seedlings Kit": "Набор для рассады", "Garden Chair": "Садовое кресло",
    "Lawn Mower": "Газонокосилка",
}
VARIANTS: dict[str, str] = {
    "Farm": "фермерское", "Organic": "органик", "Light": "лайт", "Classic": "классический",
    "Smoked": "копчёный", "Strawberry": "клубника", "Natural": "натуральный", "Peach": "персик",
    "Blueberry": "черника", "No Sugar": "без сахара", "Sliced": "нарезка", "Fresh": "свежий",
    "Rye": "ржаной", "Seeded": "с семечками", "Butter": "сливочный", "Chocolate": "шоколадный",
    "Vanilla": "ванильный", "Berry": "ягодный", "Chilled": "охлаждённый",
    "Marinated": "маринованный", "Skinless": "без кожи", "Marbled": "мраморный",
    "Lean": "постный", "For Grill": "для гриля", "Premium": "премиум", "Frozen": "замороженный",
    "Wild": "дикий", "Farmed": "с фермы", "in Oil": "в масле", "in Own Juice": "в собственном соку",
    "Lightly Salted": "слабосолёный", "Greenhouse": "тепличные", "Local": "местные",
    "Cherry": "черри", "Young": "молодой", "Ripe": "спелые", "Imported": "импортные",
    "Baby": "мини", "Washed": "мытый", "Spicy": "острый", "Home-Style": "по-домашнему",
    "Big Portion": "большая порция", "Vegan": "веганский", "Chicken": "с курицей",
    "Tuna": "с тунцом", "Veggie": "овощной", "Salmon": "с лососем", "Thin": "тонкое тесто",
    "Large": "большая", "Sour Cream & Onion": "сметана и лук", "Paprika": "паприка",
    "Salt": "с солью", "Cheese": "сырный", "Roasted": "жареный", "Hazelnut": "с фундуком",
    "70% Cocoa": "70% какао", "Caramel": "карамель", "Nut": "ореховый", "Coconut": "кокосовый",
    "Oat": "овсяный", "Zero": "без сахара", "Lemon": "лимон", "Original": "оригинальный",
    "Sparkling": "газированная", "Still": "негазированная", "Direct Pressed": "прямого отжима",
    "Arabica": "арабика", "Espresso": "эспрессо", "Earl Grey": "эрл грей", "Sencha": "сенча",
    "Durum": "из твёрдых сортов", "Whole Grain": "цельнозерновой",
    "Quick Cook": "быстрого приготовления",
    "Extra Virgin": "нерафинированное", "Select": "отборные", "Apple": "яблоко", "Pumpkin": "тыква",
    "Buckwheat": "гречневая", "Stage 1": "1 ступень", "Stage 2": "2 ступень", "Size 2": "размер 2",
    "Size 3": "размер 3", "Size 4": "размер 4", "Size 5": "размер 5",
    "Sensitive": "для чувствительной кожи",
    "Beef": "с говядиной", "Lamb": "с ягнёнком", "Puppy": "для щенков",
    "Sterilised": "для стерилизованных",
    "Kitten": "для котят", "Eco": "эко", "Extra Strong": "суперпрочные", "Mixed": "ассорти",
    "128 GB": "128 ГБ", "256 GB": "256 ГБ", "512 GB": "512 ГБ", "5G": "5G",
    "ANC": "с шумоподавлением", "Sport": "спортивные", "Mini": "мини", "Pro": "Pro",
    "Office": "офисный", "Gaming": "игровой", "Ultra": "Ultra", "Wireless": "беспроводная",
    "65 W": "65 Вт", "20000 mAh": "20000 мАч", "Silicone": "силиконовый", "2 m": "2 м",
    "Non-Stick": "антипригарная", "Steel": "стальной", "Glass": "стеклянный",
    "Compact": "компактный", "Cotton": "хлопок", "Satin": "сатин", "Linen": "лён",
    "Warm": "тёплый", "Smart": "умный", "Quiet": "тихий", "Steam": "паровой",
    "Men": "мужской", "Women": "женский", "Hooded": "с капюшоном",
    "Waterproof": "водонепроницаемый",
    "Oversize": "оверсайз", "Slim": "слим", "Beach": "пляжный", "City": "городской",
    "Creative": "творческий", "Educational": "развивающий", "Boys": "для мальчиков",
    "Girls": "для девочек", "Travel": "дорожный", "Convertible": "трансформер",
    "Hyaluronic": "с гиалуроновой кислотой", "Vitamin C": "с витамином С",
    "Anti-Age": "антивозрастной", "Repair": "восстанавливающий", "Volume": "для объёма",
    "Matte": "матовый", "Nude": "нюдовый", "Floral": "цветочный", "Home": "для дома",
    "Adjustable": "регулируемые", "Mountain": "горный", "Winter": "зимний", "Summer": "летний",
    "Ultralight": "сверхлёгкий", "Folding": "складной", "Charcoal": "угольный",
    "Electric": "электрический", "Tomato": "томатный",
}
SIZES: dict[str, str] = {  # sizes that are not a number and a unit
    "Black": "чёрный", "Blue": "синий", "Silver": "серебристый", "Green": "зелёный",
    "White": "белый", "Gray": "серый", "Red": "красный", "Standard": "стандарт",
    "Single": "1,5-спальный", "Double": "2-спальный", "Euro": "евро", "Max": "Max",
    "Set": "набор", "2p": "2-местная", "4p": "4-местная", "6m+": "6 мес+",
}
# fmt: on
_UNITS = {
    "ml": "мл",
    "l": "л",
    "g": "г",
    "kg": "кг",
    "pc": "шт",
    "pcs": "шт",
    "rolls": "рулонов",
    "cm": "см",
    "m": "м",
}  # fmt: skip
_AMOUNT = re.compile(r"^(\d+(?:\.\d+)?) (ml|l|g|kg|pcs|pc|rolls|cm|m)$")


def russian_size(size: str) -> str:
    """``"1.4 l"`` -> ``"1,4 л"``; a size without a unit (``"M"``, ``"42"``) from :data:`SIZES`."""
    m = _AMOUNT.match(size)
    if m:
        return f"{m.group(1).replace('.', ',')} {_UNITS[m.group(2)]}"
    return SIZES.get(size, size)  # "M", "XL", "42", "3+" read the same in Russian


def _ru(table: dict[str, str], word: str) -> str:
    if word in table:
        return table[word]
    if re.fullmatch(r"\d+(?:\.\d+)?%", word):  # "3.2%" -> "3,2%"
        return word.replace(".", ",")
    raise KeyError(f"no Russian text for the catalog word {word!r}: add it to catalog_ru")


def russian_text(
    path: tuple[str, ...], noun: str, brand: str, variant: str, size: str
) -> tuple[str, tuple[str, ...]]:
    """The Russian title and category path of an item drawn as ``brand noun variant, size``."""
    title = f"{_ru(NOUNS, noun)} {brand} {_ru(VARIANTS, variant)}, {russian_size(size)}"
    return title, (*(_ru(PATHS, p) for p in path), _ru(NOUNS, noun))
