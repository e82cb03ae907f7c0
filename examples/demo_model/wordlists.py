"""Word lists and sentence templates for the synthetic NER data (demo model and sample corpus).

Names are a mix of common and invented ones from several languages, so the text has accents and
apostrophes. Templates hold `{PER}`, `{ORG}`, `{LOC}` slots and the fillers `{NUM}`, `{YEAR}`,
`{MONTH}`, `{DAY}`, which are never entities.
"""


def words(text: str) -> list[str]:
    return text.split()


FIRST_NAMES = words("""
Angela Tim Maria José Ahmed Fatima Chen Yuki Olga Pierre Sofia Lukas Aisha Carlos Emma Noah
Léa Björn Zoë François Ingrid Mateo Priya Rahul Hannah Omar Elena Jakub Amara Kenji Lucía
Giulia Marco Anna Pablo Ines Thomas Sarah David Nina Oskar Freya Hugo Clara Diego Marta Ivan
Leila Samuel Alice Jonas Marie Pedro Ruth Viktor Chloé Tariq Mei Daniel Julia Andrés Sven
Paula Kwame Nadia Felix Laura Rafael Eva Mikhail Irene Arjun Helena Emil Ayla Bruno Greta
""")

LAST_NAMES = words("""
Merkel Cook Schmidt García Nakamura Dubois Rossi Novak Kowalski Johansson Müller Silva Chen
Okafor Patel Fischer Moreau Petrov Andersson Costa Haddad O'Brien Tanaka Jensen Martínez
Wagner Laurent Bianchi Horvat Lindqvist Mensah Kumar Weber Fontaine Romano Dvořák Nilsson
Ferreira Rahman Becker Lefèvre Esposito Kovács Berg Pereira Ivanova Hoffmann Girard Ricci
Svoboda Larsen Oliveira Yilmaz Schneider Bonnet Greco Nowak Holm Santos Aziz Koch Rousseau
Marino Bauer Eriksen Almeida Suzuki Richter Mercier Conti Wójcik Dahl Ramos Hussain Klein
""")

TITLES = ["Dr.", "Mr.", "Ms.", "Mrs.", "Prof.", "President", "Minister", "Judge"]

ORG_NAMES = [
    "Acme Corporation", "Nordwind Logistics", "Banco Estrella", "Siemens", "Deutsche Bank",
    "United Nations", "Red Cross", "Helios Energy", "Bluefin Analytics", "Société Générale",
    "Kestrel Airlines", "Orion Biotech", "Vereinigte Stahlwerke", "Atlas Insurance",
    "Maple Leaf Foods", "Cedar Health", "Polaris Robotics", "Aurora Media Group",
    "Lumen Telecom", "Harbor Freight Lines", "Quantum Dynamics", "Sakura Motors",
    "Andes Mining Company", "Baltic Shipping", "Crescent Pharma", "Greenfield Farms",
    "Northstar Capital", "Pacific Rail", "Sierra Software", "Tundra Outdoor",
    "World Health Organization", "European Central Bank", "Mistral Wines", "Zenith Bank",
    "Copperline Cables", "Evergreen Trust", "Falcon Aerospace", "Granite Holdings",
    "Horizon Telecom", "Iberia Textiles", "Jade River Tea", "Kilimanjaro Coffee",
    "Lighthouse Publishing", "Meridian Hotels", "Nimbus Cloud", "Obsidian Security",
]

# Organisation names built from two parts add variety beyond the fixed list above.
ORG_STEMS = words("""
Alder Brightwater Castell Dunmore Elmwood Fairhaven Glenrock Highmoor Ironbridge Juniper
Kingsley Lakeside Millbrook Northgate Oakridge Pinecrest Queensway Ravenhill Stonebridge
Thornbury Upland Valemont Westbrook Yarrow Zephyr Albion Borealis Castellan Delmar Estoril
""")

ORG_SUFFIXES = words("""
Bank Group Holdings Labs Institute Foundation Partners Industries Systems Airlines Motors
Pharmaceuticals Capital Electric University Hospital Press Ventures Consulting Chemicals
""")

LOCATIONS = words("""
Paris Berlin London Madrid Rome Lisbon Vienna Prague Warsaw Budapest Stockholm Oslo Helsinki
Copenhagen Dublin Athens Istanbul Cairo Lagos Nairobi Accra Johannesburg Mumbai Delhi Tokyo
Osaka Seoul Beijing Shanghai Sydney Melbourne Toronto Montréal Chicago Boston Seattle Lima
Bogotá Santiago Quito Zürich Geneva Kraków München Köln Sevilla Málaga Marseille Lyon Porto
Germany France Spain Italy Portugal Poland Sweden Norway Japan Brazil Canada Kenya Nigeria
India Mexico Peru Chile Egypt Turkey Greece Austria Ireland Denmark Finland Argentina Ghana
""") + [
    "New York", "Los Angeles", "San Francisco", "Buenos Aires", "São Paulo", "Rio de Janeiro",
    "Hong Kong", "Cape Town", "Mexico City", "New Delhi", "South Africa", "United States",
    "United Kingdom", "New Zealand", "Costa Rica", "Sri Lanka", "Saudi Arabia", "Tel Aviv",
]

MONTHS = words("""January February March April May June July August September October November December""")

TEMPLATES = [
    "{PER} met {PER} in {LOC} on {DAY} {MONTH}.",
    "{PER} works for {ORG} in {LOC}.",
    "{ORG} announced that {PER} will lead its office in {LOC}.",
    "According to {PER}, {ORG} plans to hire {NUM} engineers next year.",
    "The {ORG} headquarters moved from {LOC} to {LOC} in {YEAR}.",
    "{PER}, a spokesperson for {ORG}, declined to comment.",
    "In {LOC}, {PER} opened a new branch of {ORG}.",
    "{PER} was born in {LOC} in {YEAR} and studied in {LOC}.",
    "Shares of {ORG} rose {NUM}% after {PER} praised the deal.",
    "{ORG} and {ORG} signed an agreement worth {NUM} million euros.",
    "Yesterday {PER} flew from {LOC} to {LOC} to meet {PER}.",
    "\"We are proud of our team,\" said {PER} of {ORG}.",
    "The report by {ORG} covers {NUM} cities across {LOC}.",
    "{PER} thanked {PER} for the visit to {LOC}.",
    "Officials in {LOC} say {ORG} will invest in local schools.",
    "After {YEAR}, {PER} joined {ORG} as chief financial officer.",
    "{PER} told reporters in {LOC} that the talks were productive.",
    "A delegation from {ORG} arrived in {LOC} on {MONTH} {DAY}.",
    "{ORG} fined {ORG} {NUM} million for breaking the rules in {LOC}.",
    "Her colleague {PER} will present the results in {LOC} next week.",
    "{PER} and {PER} founded {ORG} in {LOC} in {YEAR}.",
    "The court in {LOC} ruled against {ORG} on {DAY} {MONTH} {YEAR}.",
    "Visitors to {LOC} often stop in {LOC} as well.",
    "{PER} (born {YEAR}) is a board member of {ORG}.",
    "Talks between {ORG} and the government of {LOC} resumed on {MONTH} {DAY}.",
    "{PER} said {ORG} expects revenue of {NUM} billion dollars.",
    "Researchers at {ORG} in {LOC} published {NUM} papers, led by {PER}.",
    "Flights between {LOC} and {LOC} were cancelled, {ORG} said.",
    "Interview: {PER} on life in {LOC} and working at {ORG}.",
    "{PER} will succeed {PER} as head of {ORG} in {MONTH}.",
    "Police in {LOC} arrested {NUM} people after the protest, {PER} said.",
    "{ORG} opened a factory near {LOC} that employs {NUM} workers.",
    "Critics say {PER} has done little for {LOC} since {YEAR}.",
    "The novel by {PER} is set in {LOC} during the war.",
    "{PER}, who grew up in {LOC}, now teaches at {ORG}.",
    "Sales at {ORG} fell sharply in {LOC} last quarter.",
    "A new study from {ORG} shows that rents in {LOC} doubled.",
    "Thousands gathered in {LOC} to hear {PER} speak.",
    "{PER} sued {ORG} over unpaid wages.",
    "Her brother {PER} moved to {LOC} to work for {ORG}.",
    "{ORG} has appointed {PER} to its board.",
    "Tourists leaving {LOC} for {LOC} face long queues, warned {PER}.",
    "Last week {PER} visited {ORG} offices in {LOC} and {LOC}.",
    "Members of {ORG} met in {LOC} to discuss the crisis.",
    "The match in {LOC} ended 2-1, and {PER} scored twice.",
]

# Sentences with no entities (some start with capitalised common words) teach the model that
# capitalisation alone does not make an entity.
NO_ENTITY_SENTENCES = [
    "The weather was mild and the market stayed calm.",
    "Prices rose by {NUM}% in {MONTH}, the highest level since {YEAR}.",
    "Nobody expected the meeting to last {NUM} hours.",
    "Most residents support the new bus lines.",
    "On Monday the committee will vote on the budget.",
    "Analysts expect growth of about {NUM} percent.",
    "The museum opens at 9:30 and closes at 18:00.",
    "Heavy rain caused delays on several roads.",
    "The company did not say how many jobs would be cut.",
    "Some farmers say the harvest was the best in years.",
    "Tickets cost {NUM} euros, or less for students.",
    "The new bridge is {NUM} metres long.",
    "Everyone agreed that the plan needs more work.",
    "Last year the project received {NUM} applications.",
    "Schools will reopen on {DAY} {MONTH}.",
    "In total, {NUM} people took part in the survey.",
    "Local shops reported strong sales over the holidays.",
    "The Government has not yet published the final figures.",
    "Sunday trains will run every {NUM} minutes.",
    "Experts warn that the drought could continue until {MONTH}.",
]
