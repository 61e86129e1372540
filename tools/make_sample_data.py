#!/usr/bin/env python3
"""Generate the synthetic French NER sample data (medico-social register).

Every sentence is produced from templates and name pools written for this
project (nothing is copied from any corpus).  The output is deterministic:
the same ``--seed`` gives byte-identical files.

Usage::

    python tools/make_sample_data.py                 # writes data/*.jsonl + data/label2id.json
    python tools/make_sample_data.py --check         # only validates the files already written
    python tools/make_sample_data.py --show 15       # also prints 15 random train sentences

Sentences are deduplicated by token tuple before splitting (no sentence is
repeated inside or across splits); the split (default 2400/300/300) is
stratified so that every split has the same share of entity-free sentences.

Files written (one JSON object per line, ``ensure_ascii=False``)::

    data/train.jsonl, data/val.jsonl, data/test.jsonl
        {"tokens": ["Mme", "Durand", "habite", "à", "Lyon", "."],
         "ner_tags": ["O", "B-PER", "O", "O", "B-LOC", "O"]}
    data/label2id.json
        {"O": 0, "B-PER": 1, "I-PER": 2, "B-LOC": 3, "I-LOC": 4, "B-ORG": 5, "I-ORG": 6}

Tokenization (identical to the pipeline's word tokenizer rules)
---------------------------------------------------------------
* whitespace separates tokens and never occurs inside one; no empty token;
* elisions are split after the apostrophe, which stays with the elided part:
  l' d' j' m' n' s' t' c' qu' jusqu' lorsqu' puisqu' (any case, ' or ’);
  ``aujourd'hui`` stays one token;
* hyphenated words stay whole (Jean-Pierre, Saint-Étienne, lui-même, a-t-il);
* numbers stay whole (3,5  12h30  1.000  75001  1er  3e  06.12.34.56.78);
* punctuation and symbols are single tokens (. , ; : ! ? ( ) « » " / % € +),
  except a run ``...`` which is one token; ``M.`` gives ``M`` and ``.``.
Sentences are rendered as text with character-level entity spans, tokenized
with :func:`tokenize`, and every entity span is checked to fall exactly on
token boundaries; tags are then derived from the spans (IOB2).

Annotation rules (applied by construction, checked where possible)
------------------------------------------------------------------
PER  people: patients, relatives, children, social workers, doctors.
     * Civility and professional titles are O: M. Mme Mlle Madame Monsieur
       Dr Docteur Pr.  Role nouns and kinship words are O ("sa fille",
       "assistante sociale", "médecin traitant").
     * The name span covers first name(s) and surname(s), hyphenated parts
       and particles: "de Villiers", "Le Gall" -> B-PER I-PER.  A name with an
       elision-like apostrophe is split by the tokenizer and stays one
       entity: "N'Diaye" -> "N'" B-PER, "Diaye" I-PER.
     * Upper-case surnames (admin style "DURAND Claire") are PER like others.
     * Names listed without any separator (signature or attendance lists)
       are separate entities, each starting with B-PER.
LOC  towns, streets, departments, regions, countries.
     * Streets include their type word: "rue des Lilas", "avenue Jean-Jaurès".
     * House numbers, "bis", postcodes, "(59)" after a department, floors and
       building letters are O: "12 rue des Lilas, 69003 Lyon" ->
       O LOC LOC LOC O O LOC.
     * A town's own article is part of the LOC when written ("Le Havre",
       "La Rochelle"); when it is contracted with a preposition
       ("au Havre", "du Mans", "aux Mureaux") the contraction is O and only
       the noun is LOC.
     * Departments and regions are LOC without their article/preposition:
       "dans le Nord", "en Seine-Saint-Denis", "de l'Isère" -> only the name.
ORG  named bodies: EHPAD, CCAS, MDPH, CAF, CPAM, hospitals, associations,
     employment and housing bodies, courts, councils, schools...
     * The whole designation is ONE entity, including its type word and its
       place complement: "CCAS de Lyon", "MDPH du Nord", "Centre hospitalier
       universitaire de Nantes", "EHPAD Les Tilleuls", "Hôpital
       Pitié-Salpêtrière", "collège Jean-Moulin".  No nested entities: a
       town or person name inside an ORG name is I-ORG.
     * The article/preposition before it is O: "l'EHPAD Les Tilleuls" ->
       "l'" O, "EHPAD Les Tilleuls" ORG; "au CCAS de Lyon" -> "au" O.
     * Acronyms or names of specific bodies are ORG even alone: "la CAF",
       "le CCAS", "la MDPH", "l'UDAF", "France Travail", "la Mission locale".
     * Generic establishment types used as common nouns are O: "une entrée
       en EHPAD", "une orientation en ESAT", "l'hôpital", "un SSIAD".
     * A place written right after a complete body name with no preposition
       (letterhead / address-block style) is a separate LOC:
       "Centre hospitalier Saint-Jean Perpignan" -> ORG then LOC.
O    everything else, including dates, times, amounts, phone numbers,
     percentages, ages, GIR levels, allowances and schemes (RSA, AAH, APA,
     PCH, APL), and eponymous disease names ("maladie d'Alzheimer").

Dependencies: Python standard library only.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path
from typing import Optional, Tuple

LABEL2ID = {"O": 0, "B-PER": 1, "I-PER": 2, "B-LOC": 3, "I-LOC": 4, "B-ORG": 5, "I-ORG": 6}
ENTITY_TYPES = ("PER", "LOC", "ORG")

# --------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------
_TOKEN_RE = re.compile(
    r"""
    (?P<auj>(?i:aujourd['’]hui))
  | (?P<eli>(?<![\w-])(?i:jusqu|lorsqu|puisqu|qu|[ldjmnstc])['’](?=[^\W\d_]))
  | (?P<num>\d+(?:[.,]\d+)*(?:h\d+|h)?(?:ème|ère|er|re|e)?)
  | (?P<word>[^\W\d_][^\W_]*(?:-[^\W_]+)*)
  | (?P<ell>\.\.\.)
  | (?P<other>\S)
    """,
    re.VERBOSE,
)


def tokenize(text: str) -> list[tuple[str, int, int]]:
    """Split ``text`` into (token, start, end) following the project rules."""
    out = []
    for m in _TOKEN_RE.finditer(text):
        out.append((m.group(0), m.start(), m.end()))
    return out


def detokenize(tokens: list[str]) -> str:
    """Inverse used by the self-check: space-join, no space after an elision."""
    parts = []
    for i, t in enumerate(tokens):
        parts.append(t)
        if i + 1 < len(tokens) and not t.endswith(("'", "’")):
            parts.append(" ")
    return "".join(parts)


# --------------------------------------------------------------------------
# Pools
# --------------------------------------------------------------------------
FIRST_F = """Marie Jeanne Monique Françoise Nicole Simone Yvette Josiane Ginette Colette
Odette Paulette Madeleine Suzanne Denise Martine Christiane Brigitte Sylvie Catherine
Isabelle Nathalie Valérie Sandrine Stéphanie Céline Aurélie Émilie Julie Élodie Sophie
Claire Camille Laura Manon Léa Chloé Emma Inès Jade Louise Alice Lina Zoé Clémence
Océane Anaïs Mélanie Hélène Agnès Béatrice Noémie Maëlle Fatima Aïcha Khadija Nadia
Samira Leïla Yasmina Fatoumata Aminata Awa Mariama Svetlana Ana Maria Rosa Graziella
Marie-Claire Marie-Thérèse Anne-Sophie Marie-Hélène Anne-Laure Marie-Christine
Marie-Paule Éloïse Gaëlle Solène Maëva Perrine Ophélie Mireille Annick Gisèle Huguette
Lucienne Renée Germaine Thérèse Andrée Bernadette Geneviève Raymonde Yolande Zohra
Malika Djamila Rachida Salomé Jessica Cindy Audrey Virginie Karine Laetitia Nadège
Ludivine Coralie Charlotte Margaux Mathilde Juliette Agathe Bérénice Eugénie""".split()
FIRST_M = """Jean Pierre Michel André Jacques Bernard René Robert Marcel Roger Claude
Gérard Daniel Alain Patrick Philippe Christian Didier Thierry Pascal Éric Laurent
Stéphane Olivier Frédéric Sébastien Nicolas Julien Jérôme Cédric Mickaël Kévin Anthony
Maxime Thomas Hugo Lucas Nathan Enzo Louis Gabriel Raphaël Noah Léo Théo Mathis Adam
Yanis Ilyes Mohamed Ahmed Karim Rachid Mehdi Youssef Omar Hamid Mamadou Moussa Ibrahima
Ousmane Abdoulaye Sékou Jean-Pierre Jean-Claude Jean-Marc Jean-Luc Jean-François
Pierre-Yves Jean-Baptiste Paul-Henri Marc-Antoine François-Xavier Loïc Gaël Yannick
Erwan Joël Noël Hervé Benoît Grégoire Antoine Baptiste Quentin Florian Damien Fabrice
Lionel Ludovic Yves Serge Guy Maurice Lucien Henri Raymond Gilbert Fernand João Manuel
Antonio Dimitri Vasile Arnaud Bruno Franck Gilles Yann Jordan Dylan Samuel Élie Aurélien""".split()
YOUNG_F = """Léa Chloé Emma Inès Jade Louise Alice Lina Zoé Manon Camille Maëlle Lou Rose
Ambre Mila Nour Maïssa Sarah Yasmine Anna Éléna Romane Lilou""".split()
YOUNG_M = """Lucas Hugo Nathan Enzo Louis Gabriel Raphaël Noah Léo Théo Mathis Adam Yanis
Ilyes Sacha Tom Éthan Nolan Rayan Ayoub Timéo Kylian Evan Jules""".split()

SURNAMES = """Martin Bernard Thomas Petit Robert Richard Durand Dubois Moreau Laurent Simon
Michel Lefebvre Leroy Roux David Bertrand Morel Fournier Girard Bonnet Dupont Lambert
Fontaine Rousseau Vincent Muller Lefèvre Faure André Mercier Blanc Guérin Boyer Garnier
Chevalier François Legrand Gauthier Garcia Perrin Robin Clément Morin Nicolas Henry
Roussel Mathieu Gautier Masson Marchand Duval Denis Dumont Lemaire Meyer Dufour Meunier
Brun Blanchard Giraud Joly Rivière Lucas Brunet Gaillard Barbier Arnaud Martinez Roche
Renard Schmitt Roy Leroux Colin Vidal Caron Picard Fabre Aubert Lemoine Renaud Dumas
Lacroix Bourgeois Rey Leclerc Payet Rolland Leclercq Guillaume Lecomte Lopez Dupuis
Guillot Hubert Berger Carpentier Sanchez Moulin Deschamps Huet Vasseur Perez Boucher
Fleury Royer Klein Jacquet Poirier Marty Aubry Guyot Carré Renault Charpentier Ménard
Maillard Baron Bertin Bailly Schneider Fernandez Diallo Traoré Koné Camara Sow Diop Cissé
Benali Benamar Bouzid Haddad Belkacem Brahimi Mansouri Saïdi Cherif Amrani Nguyen Tran
Pham Kowalski Nowak Yilmaz Öztürk Ferreira Pereira Rodrigues Costa Ribeiro Lemaître
Delacroix Desmarais Bouvier Collet Prévost Tessier Besnard Pelletier Lebrun Marchal
Weber Hoarau Grondin Técher Lebon Kerjean Morvan Tanguy Quéré""".split() + [
    "Le Gall", "Le Goff", "Le Roux", "Le Bihan", "Le Corre", "Le Guen", "Le Floch",
    "de Villiers", "de La Fontaine", "de Sousa", "Da Silva", "Dos Santos", "N'Diaye",
    "N'Guessan", "N'Dour", "Dupont-Moretti", "Martin-Lavigne", "Lefèvre-Dubois",
    "Moreau-Chevalier", "Bernard-Léonard", "Saint-Martin",
]

# (name, two-digit department code used for postcodes)
TOWNS = [
    ("Paris", "75"), ("Marseille", "13"), ("Lyon", "69"), ("Toulouse", "31"), ("Nice", "06"),
    ("Nantes", "44"), ("Montpellier", "34"), ("Strasbourg", "67"), ("Bordeaux", "33"),
    ("Lille", "59"), ("Rennes", "35"), ("Reims", "51"), ("Toulon", "83"),
    ("Saint-Étienne", "42"), ("Le Havre", "76"), ("Grenoble", "38"), ("Dijon", "21"),
    ("Angers", "49"), ("Nîmes", "30"), ("Villeurbanne", "69"), ("Clermont-Ferrand", "63"),
    ("Le Mans", "72"), ("Aix-en-Provence", "13"), ("Brest", "29"), ("Tours", "37"),
    ("Amiens", "80"), ("Limoges", "87"), ("Annecy", "74"), ("Perpignan", "66"),
    ("Boulogne-Billancourt", "92"), ("Metz", "57"), ("Besançon", "25"), ("Orléans", "45"),
    ("Saint-Denis", "93"), ("Argenteuil", "95"), ("Rouen", "76"), ("Mulhouse", "68"),
    ("Montreuil", "93"), ("Caen", "14"), ("Nancy", "54"), ("Tourcoing", "59"),
    ("Roubaix", "59"), ("Nanterre", "92"), ("Vitry-sur-Seine", "94"), ("Avignon", "84"),
    ("Créteil", "94"), ("Poitiers", "86"), ("Aubervilliers", "93"), ("Dunkerque", "59"),
    ("Aulnay-sous-Bois", "93"), ("Versailles", "78"), ("Colombes", "92"), ("Béziers", "34"),
    ("La Rochelle", "17"), ("Champigny-sur-Marne", "94"), ("Pau", "64"), ("Cannes", "06"),
    ("Antibes", "06"), ("Calais", "62"), ("Ajaccio", "20"), ("Drancy", "93"),
    ("Mérignac", "33"), ("Saint-Nazaire", "44"), ("Colmar", "68"),
    ("Issy-les-Moulineaux", "92"), ("Noisy-le-Grand", "93"), ("Évry-Courcouronnes", "91"),
    ("Vénissieux", "69"), ("Cergy", "95"), ("Valence", "26"), ("Bourges", "18"),
    ("Pessac", "33"), ("Ivry-sur-Seine", "94"), ("Quimper", "29"), ("La Seyne-sur-Mer", "83"),
    ("Antony", "92"), ("Troyes", "10"), ("Chambéry", "73"), ("Niort", "79"), ("Lorient", "56"),
    ("Sarcelles", "95"), ("Beauvais", "60"), ("Saint-Quentin", "02"), ("Vannes", "56"),
    ("Cholet", "49"), ("Laval", "53"), ("Arras", "62"), ("Albi", "81"), ("Carcassonne", "11"),
    ("Bayonne", "64"), ("Lens", "62"), ("Douai", "59"), ("Valenciennes", "59"),
    ("Maubeuge", "59"), ("Charleville-Mézières", "08"), ("Châlons-en-Champagne", "51"),
    ("Bourg-en-Bresse", "01"), ("Mont-de-Marsan", "40"), ("Périgueux", "24"),
    ("Angoulême", "16"), ("Auxerre", "89"), ("Nevers", "58"), ("Épinal", "88"),
    ("Évreux", "27"), ("Alençon", "61"), ("Saint-Brieuc", "22"), ("Lannion", "22"),
    ("Morlaix", "29"), ("La Roche-sur-Yon", "85"), ("Le Puy-en-Velay", "43"),
    ("Aurillac", "15"), ("Rodez", "12"), ("Cahors", "46"), ("Tarbes", "65"), ("Agen", "47"),
    ("Gap", "05"), ("Digne-les-Bains", "04"), ("Montauban", "82"), ("Castres", "81"),
    ("Sète", "34"), ("Arles", "13"), ("Istres", "13"), ("Martigues", "13"), ("Aubagne", "13"),
    ("Fréjus", "83"), ("Hyères", "83"), ("Oyonnax", "01"), ("Annemasse", "74"),
    ("Thonon-les-Bains", "74"), ("Roanne", "42"), ("Montluçon", "03"), ("Vichy", "03"),
    ("Guéret", "23"), ("Tulle", "19"), ("Brive-la-Gaillarde", "19"), ("Le Creusot", "71"),
    ("Mâcon", "71"), ("Chalon-sur-Saône", "71"), ("Lons-le-Saunier", "39"), ("Belfort", "90"),
    ("Épernay", "51"), ("Alès", "30"), ("Orange", "84"), ("Carpentras", "84"),
    ("Saint-Malo", "35"), ("Vitré", "35"), ("Fougères", "35"), ("Les Mureaux", "78"),
    ("Mantes-la-Jolie", "78"), ("Meaux", "77"), ("Melun", "77"), ("Creil", "60"),
    ("Compiègne", "60"), ("Soissons", "02"), ("Laon", "02"), ("Abbeville", "80"),
    ("Boulogne-sur-Mer", "62"), ("Saint-Omer", "62"), ("Cherbourg-en-Cotentin", "50"),
    ("Saint-Lô", "50"), ("Lisieux", "14"), ("Dieppe", "76"), ("Saumur", "49"), ("Blois", "41"),
    ("Chartres", "28"), ("Dreux", "28"), ("Châteauroux", "36"), ("Forbach", "57"),
    ("Thionville", "57"), ("Haguenau", "67"), ("Sélestat", "67"),
    ("Saint-Dié-des-Vosges", "88"), ("Lunéville", "54"), ("Verdun", "55"), ("Bar-le-Duc", "55"),
]

# (name, gender m/f/pl, code)
DEPTS = [
    ("Nord", "m", "59"), ("Pas-de-Calais", "m", "62"), ("Somme", "f", "80"), ("Aisne", "f", "02"),
    ("Oise", "f", "60"), ("Seine-Saint-Denis", "f", "93"), ("Val-de-Marne", "m", "94"),
    ("Hauts-de-Seine", "pl", "92"), ("Essonne", "f", "91"), ("Yvelines", "pl", "78"),
    ("Seine-et-Marne", "f", "77"), ("Rhône", "m", "69"), ("Isère", "f", "38"), ("Loire", "f", "42"),
    ("Ain", "m", "01"), ("Savoie", "f", "73"), ("Haute-Savoie", "f", "74"),
    ("Bouches-du-Rhône", "pl", "13"), ("Var", "m", "83"), ("Vaucluse", "m", "84"),
    ("Alpes-Maritimes", "pl", "06"), ("Hérault", "m", "34"), ("Gard", "m", "30"),
    ("Haute-Garonne", "f", "31"), ("Gironde", "f", "33"), ("Landes", "pl", "40"),
    ("Pyrénées-Atlantiques", "pl", "64"), ("Loire-Atlantique", "f", "44"),
    ("Maine-et-Loire", "m", "49"), ("Ille-et-Vilaine", "f", "35"), ("Finistère", "m", "29"),
    ("Morbihan", "m", "56"), ("Bas-Rhin", "m", "67"), ("Haut-Rhin", "m", "68"),
    ("Moselle", "f", "57"), ("Meurthe-et-Moselle", "f", "54"), ("Marne", "f", "51"),
    ("Puy-de-Dôme", "m", "63"), ("Loiret", "m", "45"), ("Indre-et-Loire", "f", "37"),
    ("Vienne", "f", "86"), ("Charente-Maritime", "f", "17"), ("Dordogne", "f", "24"),
    ("Aude", "f", "11"), ("Pyrénées-Orientales", "pl", "66"), ("Calvados", "m", "14"),
    ("Seine-Maritime", "f", "76"), ("Sarthe", "f", "72"), ("Doubs", "m", "25"),
    ("Creuse", "f", "23"), ("Corrèze", "f", "19"), ("Haute-Vienne", "f", "87"),
    ("Allier", "m", "03"), ("Ardèche", "f", "07"), ("Drôme", "f", "26"), ("Vendée", "f", "85"),
]
REGIONS = [
    ("Bretagne", "f"), ("Normandie", "f"), ("Occitanie", "f"), ("Nouvelle-Aquitaine", "f"),
    ("Île-de-France", "f"), ("Hauts-de-France", "pl"), ("Grand Est", "m"),
    ("Auvergne-Rhône-Alpes", "f"), ("Bourgogne-Franche-Comté", "f"),
    ("Centre-Val de Loire", "m"), ("Pays de la Loire", "pl"),
    ("Provence-Alpes-Côte d'Azur", "f"), ("Corse", "f"),
]
COUNTRIES = [
    ("Algérie", "f"), ("Maroc", "m"), ("Tunisie", "f"), ("Sénégal", "m"), ("Mali", "m"),
    ("Portugal", "m"), ("Roumanie", "f"), ("Côte d'Ivoire", "f"), ("Turquie", "f"),
    ("Syrie", "f"), ("Afghanistan", "m"), ("Ukraine", "f"), ("Comores", "pl"), ("Haïti", "hm"),
    ("Guinée", "f"), ("Cameroun", "m"), ("Espagne", "f"), ("Italie", "f"), ("Pologne", "f"),
    ("Vietnam", "m"), ("Sri Lanka", "m"), ("Congo", "m"), ("Érythrée", "f"), ("Géorgie", "f"),
]
STREET_TYPES = (["rue"] * 12 + ["avenue"] * 3 + ["boulevard"] * 3 + ["allée"] * 2
                + ["chemin"] * 2 + ["impasse"] * 2 + ["place", "quai", "cours", "route", "square"])
STREET_NAMES = [
    "des Lilas", "Jean-Jaurès", "Victor-Hugo", "de la République", "du Général-de-Gaulle",
    "Pasteur", "Gambetta", "des Écoles", "de la Gare", "du Moulin", "Émile-Zola",
    "Jules-Ferry", "des Acacias", "de la Liberté", "de Paris", "du Stade", "des Peupliers",
    "Voltaire", "Jean-Moulin", "Carnot", "Anatole-France", "de Verdun", "du Maréchal-Foch",
    "du Général-Leclerc", "Paul-Bert", "Louis-Pasteur", "de l'Église", "de la Mairie",
    "des Roses", "des Vignes", "du Château", "des Prés", "Georges-Clemenceau",
    "Aristide-Briand", "Pierre-Brossolette", "Danton", "Racine", "Molière", "de Strasbourg",
    "de Bretagne", "d'Alsace-Lorraine", "des Cerisiers", "du Commerce", "de la Paix",
    "Saint-Michel", "Sainte-Catherine", "des Marronniers", "du Port", "des Mésanges",
    "des Bleuets", "de la Fontaine", "du Lavoir", "Marcel-Pagnol", "Simone-Veil",
    "Louise-Michel", "Marie-Curie", "Rosa-Parks", "Olympe-de-Gouges", "Nelson-Mandela",
    "du Docteur-Schweitzer", "Édouard-Vaillant", "Jean-Mermoz", "des Frères-Lumière",
    "de l'Hôtel-de-Ville", "Lafayette", "Thiers", "Mozart", "Berlioz", "des Glycines",
    "du Bois", "des Jardins", "de Provence", "de Normandie", "Saint-Exupéry", "des Hirondelles",
]
STREET_FIXED = ["Grande Rue", "Grand-Rue", "rue Nationale", "cours Lafayette",
                "place du Marché", "rue du Faubourg-Saint-Antoine"]
RESIDENCES = [
    "Les Tilleuls", "Les Glycines", "La Roseraie", "Le Clos Fleuri", "Les Jardins d'Automne",
    "Les Magnolias", "Le Bois Joli", "Les Myosotis", "Les Charmilles", "La Source",
    "Les Hortensias", "Le Verger", "Les Cèdres", "Les Mimosas", "Le Val Fleuri",
    "Les Marronniers", "Les Jonquilles", "La Chênaie", "Les Lavandes", "Sainte-Marie",
    "Saint-Joseph", "Les Coquelicots", "L'Orée du Bois", "Le Parc", "Les Terrasses du Lac",
    "Les Peupliers", "La Maison du Lac", "Les Alizés", "Le Moulin Vert", "Les Eglantines",
]
HOSPITAL_NAMES = [
    "Pitié-Salpêtrière", "Necker", "Bichat", "Lariboisière", "Édouard-Herriot", "Saint-Louis",
    "Georges-Pompidou", "Tenon", "Saint-Antoine", "Purpan", "Pellegrin", "Robert-Debré",
    "de la Croix-Rousse", "de la Timone", "Nord", "Bretonneau", "Charles-Nicolle",
]
CH_NAMES = ["Saint-Jean", "Sainte-Anne", "Le Vinatier", "Paul-Guiraud", "Esquirol",
            "Charles-Perrens", "Guillaume-Régnier", "Sainte-Marie", "Saint-Joseph",
            "Émile-Roux", "Henri-Laborit"]
CLINIC_NAMES = ["du Parc", "Saint-Roch", "des Cèdres", "Pasteur", "Sainte-Odile",
                "de l'Espérance", "Les Sorbiers", "du Val d'Ouest", "Saint-Augustin"]
ESAT_NAMES = ["Les Ateliers du Val", "de la Vallée", "Le Colombier", "Jean-Moulin",
              "Les Ateliers de la Plaine", "L'Envol", "La Ferme du Bocage", "Le Tremplin"]
SCHOOL_NAMES = ["Jean-Moulin", "Victor-Hugo", "Jules-Ferry", "Louise-Michel", "Pablo-Picasso",
                "Marie-Curie", "Jean-Macé", "Paul-Éluard", "Gustave-Eiffel", "Simone-Veil"]
ASSOC_FREE = [  # (name, article)
    ("Secours populaire français", "le"), ("Secours populaire", "le"),
    ("Secours catholique", "le"), ("Croix-Rouge française", "la"), ("Croix-Rouge", "la"),
    ("Emmaüs", ""), ("Restos du cœur", "les"), ("Petits Frères des Pauvres", "les"),
    ("France Alzheimer", ""), ("APF France handicap", ""), ("Unapei", "l'"),
    ("Habitat et Humanisme", ""), ("Association Entraide et Partage", "l'"),
    ("Association Le Relais", "l'"), ("Association Trait d'Union", "l'"),
    ("Association Les Amis du Jeudi", "l'"), ("Fondation Hospitalière Sainte-Marie", "la"),
    ("ADMR", "l'"), ("Banque alimentaire", "la"),
]
# standalone acronyms / names of specific bodies (ORG even without place)
ORG_STANDALONE = [
    ("CAF", "la"), ("CPAM", "la"), ("MDPH", "la"), ("CCAS", "le"), ("UDAF", "l'"),
    ("ADMR", "l'"), ("France Travail", ""), ("Mission locale", "la"), ("PMI", "la"),
    ("Conseil départemental", "le"), ("CARSAT", "la"), ("MSA", "la"), ("URSSAF", "l'"),
    ("Banque de France", "la"), ("Secours populaire", "le"), ("Croix-Rouge", "la"),
    ("Emmaüs", ""), ("Cap emploi", ""), ("Assurance maladie", "l'"),
    ("ARS", "l'"), ("Pôle emploi", ""),
]
ALLOWANCES = [("RSA", "le"), ("AAH", "l'"), ("APA", "l'"), ("PCH", "la"), ("APL", "l'"),
              ("ASPA", "l'"), ("prime d'activité", "la"), ("allocation de solidarité spécifique", "l'"),
              ("pension d'invalidité", "la"), ("complémentaire santé solidaire", "la"),
              ("aide sociale à l'hébergement", "l'"), ("allocation de retour à l'emploi", "l'")]
MONTHS = ["janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août",
          "septembre", "octobre", "novembre", "décembre"]
WEEKDAYS = ["lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi"]
DURATIONS = ["trois semaines", "15 jours", "6 mois", "plus d'un an", "deux ans", "quelques jours",
             "un mois", "deux mois", "18 mois", "plusieurs semaines", "huit jours", "10 jours",
             "trois mois", "début janvier", "la rentrée", "l'été dernier"]
FREQS = ["deux fois par jour", "trois fois par semaine", "chaque matin", "le mardi et le vendredi",
         "une fois par semaine", "matin et soir", "tous les jours", "le week-end"]
NEEDS = ["une aide au ménage", "le portage des repas", "une téléassistance", "une aide à la toilette",
         "un accueil de jour", "un hébergement temporaire", "une aide aux courses",
         "un accompagnement budgétaire", "un lit médicalisé", "un fauteuil roulant",
         "des protections", "une aide pour les démarches administratives", "un déambulateur"]
SYMPTOMS = ["des troubles de la mémoire", "une grande fatigue", "des chutes répétées",
            "une perte de poids", "des troubles du comportement", "une anxiété importante",
            "des douleurs dorsales", "des difficultés à marcher", "une humeur dépressive",
            "des troubles du sommeil", "une désorientation le soir", "une incontinence"]
HELPERS = ["l'infirmière", "l'aide à domicile", "le kinésithérapeute", "l'assistante sociale",
           "le médecin traitant", "l'éducatrice", "le pharmacien", "l'auxiliaire de vie",
           "l'aide-soignante", "le gardien", "la psychologue", "le tuteur", "la curatrice"]
DOCUMENTS = ["le certificat médical", "l'avis d'imposition", "le RIB", "la notification de droits",
             "le justificatif de domicile", "la carte d'identité", "le jugement de tutelle",
             "l'attestation de la CSS", "le bail", "les trois derniers bulletins de salaire",
             "le livret de famille", "la quittance de loyer", "le titre de séjour"]
NUM_WORDS = ["deux", "trois", "quatre", "cinq", "six"]
ROLES = [("assistant social", "assistante sociale"),
         ("conseiller en économie sociale et familiale", "conseillère en économie sociale et familiale"),
         ("éducateur spécialisé", "éducatrice spécialisée"),
         ("infirmier coordinateur", "infirmière coordinatrice"),
         ("mandataire judiciaire", "mandataire judiciaire"), ("psychologue", "psychologue"),
         ("ergothérapeute", "ergothérapeute"), ("référent RSA", "référente RSA"),
         ("cadre de santé", "cadre de santé"), ("chef de service", "cheffe de service"),
         ("évaluateur APA", "évaluatrice APA"), ("travailleur social", "travailleuse sociale")]
DOC_ROLES = ["médecin traitant", "gériatre", "psychiatre", "neurologue", "pédiatre",
             "médecin coordonnateur", "cardiologue", "médecin du travail"]
RELATIONS_F = ["fille", "sœur", "mère", "nièce", "épouse", "compagne", "voisine", "petite-fille",
               "belle-fille", "tante", "cousine", "amie", "ex-épouse"]
RELATIONS_M = ["fils", "frère", "père", "neveu", "époux", "compagnon", "voisin", "petit-fils",
               "gendre", "oncle", "cousin", "ami", "beau-frère"]

BLOOD = {"fille", "sœur", "fils", "frère", "père", "petit-fils", "petite-fille", "nièce", "neveu",
         "époux", "épouse", "cousin", "cousine"}
VOWELS = set("AEIOUÉÈÊÂÎÔÛÀaeiouéèêâîôûà")
H_MUET = {"Hélène", "Hugo", "Henri", "Hervé", "Hubert", "Huguette", "Hérault", "Hôpital",
          "Hyères", "Haïti", "Hamid", "Habitat", "Hoarau"}


def starts_vowel(s: str) -> bool:
    if not s:
        return False
    if s[0] in VOWELS:
        return True
    first_word = re.split(r"[\s-]", s, maxsplit=1)[0]
    return first_word in H_MUET


# --------------------------------------------------------------------------
# Entity renderers: each returns a list of segments (text, label-or-None)
# --------------------------------------------------------------------------
Seg = Tuple[str, Optional[str]]  # (text, entity label or None)


def art_forms(text: str, art: str, form: str, label: str) -> list[Seg]:
    """Article/preposition forms for a named thing with a given article."""
    pre = {
        "": {"bare": "", "def": "", "a": "à ", "de": ("d'" if starts_vowel(text) else "de ")},
        "le": {"bare": "", "def": "le ", "a": "au ", "de": "du "},
        "la": {"bare": "", "def": "la ", "a": "à la ", "de": "de la "},
        "l'": {"bare": "", "def": "l'", "a": "à l'", "de": "de l'"},
        "les": {"bare": "", "def": "les ", "a": "aux ", "de": "des "},
    }[art][form]
    return ([(pre, None)] if pre else []) + [(text, label)]


def town_forms(name: str, form: str) -> list[Seg]:
    for art, a_form, de_form in (("Le ", "au ", "du "), ("Les ", "aux ", "des ")):
        if name.startswith(art):
            core = name[len(art):]
            if form == "bare":
                return [(name, "LOC")]
            return [(a_form if form == "a" else de_form, None), (core, "LOC")]
    if form == "bare":
        return [(name, "LOC")]
    if form == "a":
        return [("à ", None), (name, "LOC")]
    return [("d'" if starts_vowel(name) else "de ", None), (name, "LOC")]


def town_de_text(name: str) -> str:
    return "".join(t for t, _ in town_forms(name, "de"))


def geo_forms(name: str, gender: str, form: str) -> list[Seg]:
    """Departments, regions, countries: bare, def (le Nord), en (dans le Nord), de (du Nord)."""
    v = starts_vowel(name)
    if form == "bare":
        return [(name, "LOC")]
    if gender == "hm":  # Haïti: no article
        pre = {"def": "", "en": "en ", "de": "d'", "au": "en "}[form]
    elif gender == "pl":
        pre = {"def": "les ", "en": "dans les ", "de": "des ", "au": "aux "}[form]
    elif gender == "f":
        pre = {"def": "l'" if v else "la ", "en": "en ",
               "de": "de l'" if v else "de la ", "au": "en "}[form]
    else:
        pre = {"def": "l'" if v else "le ", "en": "dans l'" if v else "dans le ",
               "de": "de l'" if v else "du ", "au": "en " if v else "au "}[form]
    return ([(pre, None)] if pre else []) + [(name, "LOC")]


def de_phrase(s: str, form: str = "") -> str:
    """'de' + a noun phrase with its determiner (O text): du, de la, de l', des, d'un..."""
    if form != "de":
        return s
    for a, b in (("le ", "du "), ("les ", "des "), ("la ", "de la "), ("l'", "de l'"),
                 ("un ", "d'un "), ("une ", "d'une "), ("des ", "de ")):
        if s.startswith(a):
            return b + s[len(a):]
    return ("d'" if starts_vowel(s) else "de ") + s


def geo_de_text(name: str, gender: str) -> str:
    return "".join(t for t, _ in geo_forms(name, gender, "de"))


class Gen:
    """Random value factory bound to one RNG."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    # -- small helpers ------------------------------------------------------
    def c(self, seq):
        return self.rng.choice(seq)

    def town(self) -> str:
        return self.c(TOWNS)[0]

    def dept(self):
        return self.c(DEPTS)

    # -- numbers, dates -------------------------------------------------------
    def date(self, bare=False) -> str:
        r = self.rng
        d = r.randint(1, 28)
        m = r.randint(1, 12)
        y = r.randint(2019, 2025)
        k = r.random()
        if k < 0.35:
            s = f"{'1er' if d == 1 else d} {MONTHS[m - 1]} {y}"
        elif k < 0.55:
            s = f"{d:02d}/{m:02d}/{y}"
        elif k < 0.75:
            s = f"{self.c(WEEKDAYS)} {'1er' if d == 1 else d} {MONTHS[m - 1]}"
        elif k < 0.85:
            s = f"{d:02d}.{m:02d}.{y}"
        else:
            s = f"{d} {MONTHS[m - 1]}"
        return s if bare else "le " + s

    def birth_date(self) -> str:
        r = self.rng
        d, m, y = r.randint(1, 28), r.randint(1, 12), r.randint(1928, 2006)
        if r.random() < 0.6:
            return f"{d:02d}/{m:02d}/{y}"
        return f"{'1er' if d == 1 else d} {MONTHS[m - 1]} {y}"

    def time(self) -> str:
        r = self.rng
        h = r.randint(8, 17)
        mm = r.choice([0, 0, 15, 30, 30, 45])
        k = r.random()
        if mm == 0:
            return f"{h}h" if k < 0.7 else f"{h}h00"
        return f"{h}h{mm:02d}" if k < 0.85 else f"{h} h {mm:02d}"

    def amount(self) -> str:
        r = self.rng
        k = r.random()
        if k < 0.3:
            return f"{r.randint(20, 990)} €"
        if k < 0.45:
            return f"{r.randint(20, 990)} euros"
        if k < 0.6:
            return f"{r.randint(10, 900)},{r.randint(0, 99):02d} €"
        if k < 0.75:
            return f"{r.randint(1, 2)} {r.randint(0, 999):03d} €"
        if k < 0.88:
            return f"{r.randint(1, 3)}.{r.randint(0, 9)}00 €"
        return f"{r.randint(20, 990)}€"

    def phone(self) -> str:
        r = self.rng
        pairs = [f"{r.randint(0, 99):02d}" for _ in range(4)]
        first = r.choice(["06", "07", "01", "02", "03", "04", "05", "09"])
        k = r.random()
        if k < 0.55:
            return " ".join([first] + pairs)
        if k < 0.75:
            return ".".join([first] + pairs)
        if k < 0.9:
            return "".join([first] + pairs)
        return "+33 " + first[1] + " " + " ".join(pairs)

    def pct(self) -> str:
        r = self.rng
        n = r.choice([10, 20, 25, 30, 40, 50, 60, 70, 75, 79, 80, 90, 100])
        k = r.random()
        if k < 0.55:
            return f"{n} %"
        if k < 0.85:
            return f"{n}%"
        return f"{r.randint(1, 99)},{r.randint(1, 9)} %"

    def age(self) -> str:
        return f"{self.rng.randint(18, 99)} ans"

    def postcode(self, code: str) -> str:
        r = self.rng
        if code == "75":
            return f"750{r.randint(1, 20):02d}"
        return f"{code}{r.randint(0, 9)}{r.choice(['00', '10', '20', '30', '40', '50', '60', '70', '80', '90'])}"

    # -- LOC -----------------------------------------------------------------
    def street(self) -> str:
        if self.rng.random() < 0.05:
            return self.c(STREET_FIXED)
        return f"{self.c(STREET_TYPES)} {self.c(STREET_NAMES)}"

    def address(self, numbered=False) -> list[Seg]:
        r = self.rng
        name, code = self.c(TOWNS)
        st = self.street()
        num = str(r.randint(1, 180))
        if r.random() < 0.12:
            num += " " + r.choice(["bis", "ter"])
        k = r.random()
        if numbered:
            k = min(k, 0.69)
        if k < 0.35:
            return [(num + " ", None), (st, "LOC"), (", " + self.postcode(code) + " ", None), (name, "LOC")]
        if k < 0.5:
            return [(num + ", ", None), (st, "LOC"), (", " + self.postcode(code) + " ", None), (name, "LOC")]
        if k < 0.6:
            return [(num + " ", None), (st, "LOC"), (" ", None)] + town_forms(name, "a")
        if k < 0.69:
            return [(num + " ", None), (st, "LOC"), (" " + self.postcode(code) + " ", None), (name, "LOC")]
        if k < 0.8:
            return [(st, "LOC"), (", ", None), (name, "LOC")]
        if k < 0.9:
            return [(f"bâtiment {r.choice('ABCDE')}, appartement {r.randint(1, 60)}, {num} ", None),
                    (st, "LOC"), (", " + self.postcode(code) + " ", None), (name, "LOC")]
        return [(num + " ", None), (st, "LOC"), (" (", None), (name, "LOC"), (")", None)]

    # -- ORG -----------------------------------------------------------------
    def org(self, cat: str) -> tuple[str, str]:
        """Return (org name, article) for an organisation category.

        Categories: s (social services, mixed), h (health, broad), hosp
        (hospitals), mdph, cd (APA / departmental social action), cp (benefit
        payers), cm (health insurance), prot (child protection), cer (RSA
        contract), e (establishments), ch (children's services), a
        (associations), w (employment), b (housing), j (justice / state),
        tj (courts), m (guardianship bodies), sch (schools), n (names without
        a place), x (stand-alone names), any.
        """
        r = self.rng
        if cat == "any":
            cat = r.choice(["s", "s", "h", "h", "e", "a", "w", "b", "j", "m", "sch", "ch"])
        if cat == "x":
            return self.c(ORG_STANDALONE)
        res = self.c(RESIDENCES)
        if cat == "n":  # no place inside the name
            k = r.randint(0, 7)
            if k == 0:
                return f"EHPAD {res}", "l'"
            if k == 1:
                return f"Centre hospitalier {self.c(CH_NAMES)}", "le"
            if k == 2:
                return f"Hôpital {self.c(HOSPITAL_NAMES)}", "l'"
            if k == 3:
                return f"Clinique {self.c(CLINIC_NAMES)}", "la"
            if k == 4:
                return f"ESAT {self.c(ESAT_NAMES)}", "l'"
            if k == 5:
                typ, art = r.choice([("IME", "l'"), ("FAM", "le"), ("MAS", "la"), ("SESSAD", "le"),
                                     ("Résidence autonomie", "la")])
                return f"{typ} {res}", art
            return self.c(ASSOC_FREE)
        T = self.town()
        tde = town_de_text(T)
        dname, dg, _ = self.dept()
        dde = geo_de_text(dname, dg)
        reg, _ = self.c(REGIONS)
        hosp = [(f"CHU {tde}", "le"), (f"Centre hospitalier universitaire {tde}", "le"),
                (f"Centre hospitalier {tde}", "le"), (f"Centre hospitalier {self.c(CH_NAMES)}", "le"),
                (f"Hôpital {self.c(HOSPITAL_NAMES)}", "l'"), (f"Clinique {self.c(CLINIC_NAMES)}", "la"),
                (f"CHU {tde}", "le"), (f"Centre hospitalier {tde}", "le")]
        mdph = [(f"MDPH {dde}", "la"), (f"MDPH {dde}", "la"), ("MDPH", "la"),
                (f"Maison départementale des personnes handicapées {dde}", "la")]
        cd = [(f"Conseil départemental {dde}", "le"), ("Conseil départemental", "le"),
              (f"CCAS {tde}", "le"), (f"CLIC {tde}", "le"), (f"Maison des solidarités {tde}", "la"),
              (f"Centre médico-social {tde}", "le"), (f"CIAS {tde}", "le")]
        cm = [(f"CPAM {dde}", "la"), (f"CPAM {tde}", "la"), ("CPAM", "la"), ("CPAM", "la"),
              (f"Caisse primaire d'assurance maladie {dde}", "la"), (f"MSA {dde}", "la"),
              ("MSA", "la"), ("Assurance maladie", "l'")]
        cp = [(f"CAF {dde}", "la"), ("CAF", "la"), ("CAF", "la"),
              (f"Caisse d'allocations familiales {dde}", "la"), (f"CARSAT {reg}", "la"),
              ("CARSAT", "la")] + cm[:3]
        s = [(f"CCAS {tde}", "le"), (f"Centre communal d'action sociale {tde}", "le"),
             (f"CAF {dde}", "la"), (f"CPAM {dde}", "la"), (f"UDAF {dde}", "l'"),
             (f"Conseil départemental {dde}", "le"), (f"Maison des solidarités {tde}", "la"),
             (f"Centre médico-social {tde}", "le"), (f"PMI {tde}", "la"), (f"CLIC {tde}", "le"),
             (f"Mairie {tde}", "la"), (f"CIAS {tde}", "le"), (f"Maison France services {tde}", "la"),
             (f"MDPH {dde}", "la"), (f"ARS {reg}", "l'")]
        table = {
            "hosp": hosp,
            "h": hosp + [(f"CMP {tde}", "le"), (f"CMPP {tde}", "le"), (f"SSIAD {tde}", "le"),
                         (f"Hôpital de jour {res}", "l'"), (f"HAD {dde}", "l'"), (f"CMP {tde}", "le")],
            "mdph": mdph, "cd": cd, "cm": cm, "cp": cp,
            "s": s + s + ORG_STANDALONE[:12],
            "prot": [(f"Conseil départemental {dde}", "le"), (f"CRIP {dde}", "la"),
                     (f"PMI {tde}", "la"), ("PMI", "la"), (f"Aide sociale à l'enfance {dde}", "l'")],
            "cer": [(f"Conseil départemental {dde}", "le"), ("Conseil départemental", "le"),
                    ("France Travail", ""), (f"CCAS {tde}", "le")],
            "e": [(f"EHPAD {res}", "l'"), (f"Résidence autonomie {res}", "la"), (f"IME {res}", "l'"),
                  (f"ESAT {self.c(ESAT_NAMES)}", "l'"), (f"FAM {res}", "le"), (f"MAS {res}", "la"),
                  (f"SAMSAH {tde}", "le"), (f"SAVS {tde}", "le"), (f"Foyer d'hébergement {res}", "le"),
                  (f"EHPAD {res}", "l'"), (f"EHPAD {tde}", "l'"), (f"EHPAD {res}", "l'")],
            "ch": [(f"IME {res}", "l'"), (f"SESSAD {res}", "le"), (f"CMPP {tde}", "le"),
                   (f"ITEP {res}", "l'"), (f"Maison d'enfants à caractère social {res}", "la"),
                   (f"CAMSP {tde}", "le")],
            "a": ASSOC_FREE + [(f"ADMR {tde}", "l'"), (f"Adapei {dde}", "l'"),
                               (f"Banque alimentaire {dde}", "la"), (f"Secours populaire {tde}", "le"),
                               (f"Croix-Rouge française {tde}", "la"), (f"Restos du cœur {tde}", "les"),
                               (f"ADMR {tde}", "l'"), (f"Adapei {dde}", "l'")],
            "w": [("France Travail", ""), ("France Travail", ""), ("Pôle emploi", ""),
                  ("Cap emploi", ""), (f"Mission locale {tde}", "la"), (f"Mission locale {tde}", "la"),
                  (f"Maison de l'emploi {tde}", "la"), (f"France Travail {T}", ""),
                  (f"PLIE {tde}", "le")],
            "b": [(f"OPH {tde}", "l'"), (f"Office public de l'habitat {tde}", "l'"),
                  (f"{T.split(' ')[-1] if T.startswith(('Le ', 'Les ')) else T} Habitat", ""),
                  ("Paris Habitat", ""), ("Action Logement", ""), (f"Habitat {dname}", "")],
            "j": [(f"Tribunal judiciaire {tde}", "le"), (f"Préfecture {dde}", "la"),
                  ("Banque de France", "la"), (f"SPIP {dde}", "le"), (f"Tribunal de proximité {tde}", "le")],
            "tj": [(f"Tribunal judiciaire {tde}", "le"), (f"Tribunal de proximité {tde}", "le")],
            "m": [(f"UDAF {dde}", "l'"), (f"Association tutélaire {dde}", "l'"),
                  (f"ATMP {dde}", "l'"), ("UDAF", "l'")],
            "sch": [(f"collège {self.c(SCHOOL_NAMES)}", "le"),
                    (f"école élémentaire {self.c(SCHOOL_NAMES)}", "l'"),
                    (f"lycée professionnel {self.c(SCHOOL_NAMES)}", "le")],
        }
        return self.c(table[cat])


# --------------------------------------------------------------------------
# People
# --------------------------------------------------------------------------
class Person:
    def __init__(self, gen: Gen, kind: str, ctx: dict):
        r = gen.rng
        self.kind = kind
        if kind == "pat":
            self.g = "f" if r.random() < 0.55 else "m"
        else:
            self.g = r.choice("mf")
        if kind == "child":
            self.first = gen.c(YOUNG_F if self.g == "f" else YOUNG_M)
        else:
            self.first = gen.c(FIRST_F if self.g == "f" else FIRST_M)
        self.last = gen.c(SURNAMES)
        rels = RELATIONS_F if self.g == "f" else RELATIONS_M
        self.relation = gen.c(rels)
        if "pat" in ctx and r.random() < 0.5 and (
                kind == "child" or (kind == "rel" and self.relation in BLOOD)):
            self.last = ctx["pat"].last
        if self.g == "f":
            self.title = r.choices(["Mme ", "Madame ", "Mlle "], [70, 26, 4])[0]
        else:
            self.title = r.choices(["M. ", "Monsieur "], [76, 24])[0]
        self.dtitle = r.choices(["Dr ", "Docteur ", "Pr "], [70, 18, 12])[0]
        self.upper = r.random() < 0.15
        self.role = gen.c(ROLES)[1 if self.g == "f" else 0]
        self.doc_role = gen.c(DOC_ROLES)

    def lastname(self) -> str:
        return self.last.upper() if self.upper else self.last

    def render(self, form: str, gen: Gen) -> list[Seg]:
        r = gen.rng
        title = self.dtitle if self.kind == "doc" else self.title
        first, last = self.first, self.lastname()
        if form == "":
            if self.kind == "doc":
                form = r.choices(["s", "t", "s"], [50, 40, 10])[0]
            elif self.kind == "child":
                form = r.choices(["f", "n"], [80, 20])[0]
            elif self.kind == "pro":
                form = r.choices(["s", "t", "n"], [40, 35, 25])[0]
            else:
                form = r.choices(["s", "t", "n", "u", "tu"], [35, 30, 17, 8, 10])[0]
        if form == "s":
            return [(title, None), (last, "PER")]
        if form == "t":
            return [(title, None), (f"{first} {last}", "PER")]
        if form == "n":
            return [(f"{first} {last}", "PER")]
        if form == "f":
            return [(first, "PER")]
        if form == "u":
            return [(f"{self.last.upper()} {first}", "PER")]
        if form == "tu":
            return [(title, None), (f"{self.last.upper()} {first}", "PER")]
        if form == "r":  # with role
            if self.kind == "doc":
                return [(title, None), (last, "PER"), (", " + self.doc_role, None)]
            return [(title, None), (last, "PER"), (", " + self.role, None)]
        if form == "w":  # kinship phrase: "sa fille Sophie"
            rel = self.relation
            poss = "son" if (self.g == "m" or starts_vowel(rel)) else "sa"
            k = r.random()
            if k < 0.35:
                return [(f"{poss} {rel} ", None), (first, "PER")]
            if k < 0.6:
                return [(f"{poss} {rel} ", None), (f"{first} {self.lastname()}", "PER")]
            if k < 0.8:
                return [(f"{poss} {rel} {self.title}", None), (self.lastname(), "PER")]
            return [(f"{poss} {rel} (", None), (f"{first} {self.lastname()}", "PER"), (")", None)]
        raise KeyError(form)


# --------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------
# Slots: {base} or {base_form}.  Persons: pat, pat2, rel, rel2, pro, pro2, pro3,
# doc, doc2, child (forms: '' s t n f u tu r w).  {relw} = {rel_w}.
# Places: town (a de), dept (def en de), deptc, region (en), country (en de),
# street, addr, addrn.  Orgs: org orgs orgh orge orga orgw orgb orgj orgm orgn
# orgx orgsch (forms: bare def a de).  O values: date date_b time amount phone
# pct age year dur freq n gir allow (bare def).
# Gender alternation: [masc|fem] (patient) or [masc|fem:pro] (named person).

T_NOTE = """
Visite à domicile ce jour chez {pat}, {addr}.
VAD chez {pat_s} {date} en présence de {relw}.
{pat} est hospitalisé[|e] {orghosp_a} depuis {date}.
Entretien avec {pat} et {relw} au sujet d'une éventuelle entrée en EHPAD.
{pat_s} vit seul[|e] dans un appartement au 3e étage sans ascenseur {town_a}.
Selon {relw}, {pat_s} ne s'alimente plus correctement depuis {dur}.
{pat} perçoit {allow_def} pour un montant de {amount} par mois.
Le dossier de {pat_s} a été transmis {orgs_a} {date}.
{pat} a été orienté[|e] vers {orge_def} par {orgmdph_def}.
{pat_s} signale un loyer impayé depuis {dur} et une dette de {amount} auprès {orgb_de}.
{pat_s} refuse pour le moment toute aide à domicile.
{pat_s} a chuté à domicile {date} et a été transporté[|e] {orghosp_a} par les pompiers.
{pat} est sous curatelle renforcée exercée par {orgm_def}.
Le médecin traitant, {doc}, a constaté une perte d'autonomie importante (GIR {gir}).
{pat_s} souhaite rester à domicile malgré l'avis du {doc}.
Rencontre avec {pat_s} lors de la permanence {orgs_de}.
{pat_s} est arrivé[|e] en France en {year} ; [il|elle] est originaire {country_de}.
Demande de logement social déposée {date} auprès {orgb_de}.
{pat} bénéficie d'un accompagnement {orgw_de} depuis {dur}.
{pat_s} a repris contact avec {orgw_def} afin de s'inscrire comme demandeu[r|se] d'emploi.
{child}, {age_child}, est scolarisé[|e:child] {orgsch_a}, {town_a}.
{pat_s} nous informe qu'[il|elle] a déménagé ; nouvelle adresse : {addr}.
Rendez-vous manqué ; {pat_s} ne répond pas au {phone}.
Le {doc} préconise une hospitalisation de jour {orghosp_a}.
{pat_s}, {age}, veu[f|ve] depuis {year}, vit {town_a} près de {relw}.
Mesure de tutelle confiée à {relw} par le juge des tutelles {orgtj_de}.
Signalement transmis {orgprot_a} concernant {child_n}, {age_child}.
{pat} dit ne plus pouvoir payer ses factures d'énergie depuis {dur}.
Passage de l'infirmière libérale deux fois par jour pour la toilette de {pat_s}.
L'intervention {orga_de} auprès de {pat_s} est suspendue pendant l'hospitalisation.
{pat_s} a été vu[|e] aux urgences {orghosp_de} dans la nuit du {date_b}.
{pat_s} est hébergé[|e] chez {relw} {town_a} depuis l'incendie de son logement.
D'après {relw}, {pat_s} aurait perdu {n} kilos en {dur}.
{pat_s} est suivi[|e] par {pro_t} {orgs_de} depuis {year}.
Aide alimentaire accordée par {orga_def} pour {pat} et ses {n} enfants.
{pat_s} a obtenu un rendez-vous {orghosp_a} avec le {doc} {date}.
{pat_s} occupe un logement {orgb_de} situé {street}, {town_a}.
{relw} réside {country_en} et appelle {pat_s} chaque semaine.
{pat_s} a signé le contrat d'engagement réciproque avec {orgcer_def} {date}.
Le plan d'aide de {pat_s} prévoit {n} heures d'aide à domicile par mois avec {orga_def}.
Depuis son retour {orge_de}, {pat_s} présente des troubles du sommeil.
{pat_s} est en attente d'une place {orge_a} ; [il|elle] est {n}e sur la liste.
En l'absence de {relw}, {pat_s} a passé la nuit seul[|e].
{pro_r}, a rencontré {pat} au domicile {date}.
{pat_s} a reçu un courrier {orgcp_de} lui demandant un justificatif de ressources.
{pat_s} se rend chaque semaine {orga_a} de son quartier.
{pat_s} répète : « je veux rentrer {town_a} ».
Selon {relw} : « [il|elle] ne mange plus rien depuis {dur} ».
J'ai reçu {pat_s} et {relw} à la permanence {orgs_de}.
Lorsque {rel_f} est absent[|e:rel], personne ne passe chez {pat_s}.
{pat_s} a quitté {town} pour s'installer {town_a} chez {relw}.
Originaire {town_de}, {pat_s} vit {dept_en} depuis {year}.
Le logement de {pat_s}, {street}, est situé à {n} kilomètres du centre {town_de}.
{pat_s} souhaite se rapprocher de {relw}, qui habite {town_a}, {deptc}.
Déménagement prévu {town_a} fin {month} ; nouvelle adresse : {addr}.
[Il|Elle] a grandi {country_en} puis a vécu {town_a} et {town_a}.
{relw} propose d'accueillir {pat_s} dans sa maison {town_de}, {dept_en}.
La famille réside {street}, {town_a}, dans un logement trop petit pour {n} personnes.
Visite à domicile {street}, {town_a} : personne absente.
La ligne de bus entre {town} et {town} ne circule plus le dimanche.
Demande de mutation vers un logement {town_a} ou {town_a}, {region_en}.
Le couple a vécu {dept_en} puis {region_en} avant de s'installer au {addrn}.
[Il|Elle] a longtemps vécu {region_en} avant de s'installer {town_a}.
{pat_s} a travaillé {dept_en} puis {region_en} jusqu'à sa retraite.
"""

T_LETTER = """
Madame la Directrice {orge_de},
Monsieur le Président {orgs_de},
Je me permets de vous adresser {pat}, né[|e] le {bdate}, domicilié[|e] {addr}.
Je vous adresse {pat_s} pour une évaluation de sa situation en vue d'une orientation en ESAT.
Par la présente, je sollicite l'intervention {orgs_de} en faveur de {pat}.
Veuillez trouver ci-joint le dossier de demande de PCH de {pat_s}, transmis {orgmdph_a}.
Nous vous remercions de bien vouloir nous faire parvenir l'avis d'imposition de {pat_s}.
Je soussigné[|e:pro] {pro_t}, assistant[|e:pro] social[|e:pro] {orgs_de}, certifie avoir rencontré {pat} {date}.
Objet : demande d'aide financière exceptionnelle pour {pat}.
Objet : signalement d'une personne vulnérable, {pat}, {addr}.
Suite à notre entretien téléphonique du {date_b}, je vous confirme l'accord {orgs_de} pour une aide de {amount}.
Le {doc}, médecin traitant de {pat_s}, atteste que son état de santé nécessite une aide humaine quotidienne.
Madame, Monsieur, je vous informe que {pat} a quitté {orge_def} {date}.
J'ai l'honneur de solliciter une mesure de protection au bénéfice de {pat}, demeurant {addr}.
Vous trouverez ci-joint le certificat médical circonstancié établi par le {doc}.
Cher confrère, je vous remercie de recevoir en consultation {pat}, {age}, pour des troubles mnésiques.
Je reste à votre disposition pour tout complément d'information : {pro_t}, {orgs}, {phone}.
Nous accusons réception de votre demande d'admission pour {pat}.
Je vous informe que la commission {orgmdph_de} a émis un avis favorable le {date_b}.
[Monsieur|Madame] {pat_l}, nous avons bien reçu votre dossier de demande d'APA.
Monsieur le Juge des tutelles, je vous transmets le rapport concernant {pat}, {addr}.
Conformément à la décision {orgj_de}, {orgm_def} assure la gestion des comptes de {pat_s}.
Nous vous prions de bien vouloir transmettre le dossier {orgs_a} avant le {date_b}.
"""

T_PHONE = """
Appel de {relw} qui s'inquiète de l'état de santé de {pat_s}.
Tél. de {pro_t} {orghosp_de} : sortie de {pat_s} prévue {date}.
Appel reçu à {time} de {pat_s}, très angoissé[|e], qui demande à être rappelé[|e] au {phone}.
Message laissé sur le répondeur de {relw}, sans réponse à ce jour.
Échange téléphonique avec le {doc} qui confirme le diagnostic de maladie d'Alzheimer.
Appel {orgw_de} : {pat_s} n'est pas venu[|e] à son rendez-vous du {date_b}.
Joint[|e] ce jour au {phone}, {pat_s} accepte le passage de l'infirmière.
Appel {orgcp_de} : le dossier de {pat_s} est incomplet, il manque le RIB.
{relw} appelle pour signaler que {pat_s} a de nouveau fugué cette nuit.
Tél. {orga_de} : la livraison du colis alimentaire à {pat_s} est reportée au {date_b}.
Appel de {pat_s} à {time} : [il|elle] n'a plus d'électricité depuis hier.
Contact téléphonique avec {pro_r}, au sujet de {pat_s}.
{pro_t} {orgs_de} rappellera {pat_s} au {phone} avant {time}.
Appel {orghosp_de} : {pat_s} est sortant[|e] demain, retour à domicile organisé.
Appel du {doc_s} qui souhaite un point rapide sur la situation de {pat_s}.
"""

T_RDV = """
Rappel : rendez-vous {date} à {time} avec {pro_t} {orgs_a}.
RDV {orghosp_a} le {date_b} à {time}, service de gériatrie, bâtiment C.
Prochain rendez-vous fixé {date} à {time} au domicile de {pat_s}.
Convocation de {pat} à la commission {orgmdph_de} du {date_b}.
Consultation mémoire avec le {doc} {date} à {time}, {orghosp}.
Rendez-vous pris pour {pat_s} {orgw_a} {date}.
{pat_s} est attendu[|e] {orgcp_a} {date} à {time} pour l'ouverture de ses droits.
RDV avec {pro_s} {date} à {time} ; penser à apporter l'avis d'imposition.
Visite de pré-admission {orge_a} prévue {date} avec {relw}.
Rendez-vous {orghosp_a} à {time} : transport en VSL réservé pour {pat_s}.
"""

T_MEETING = """
Réunion de synthèse {date} en présence de {pro_t} ({orgs}), du {doc} et de {relw}.
Présents : {pro_n}, {pro2_n}, {doc_s} et {pat_s}.
Excusé[|e:pro] : {pro_t} {orgs_de}.
Compte rendu de la réunion partenariale du {date_b} {orgs_a}.
Décision : maintien à domicile avec renforcement du plan d'aide {orga_de}.
Il est convenu que {pro_t} prendra contact avec {orgh_def}.
Ordre du jour : situation de {pat}, point sur les impayés de loyer, questions diverses.
Participaient à la réunion : {pro_t} ({orgs}), {pro2_t} ({orgh}) et {pro3_t} ({orga}).
{pro_s} présente la situation de {pat} ; {doc_s} apporte des éléments médicaux.
Prochaine réunion {orgs_a} {date} à {time}.
Commission d'attribution du {date_b} : le logement proposé par {orgb_def} est accepté par {pat_s}.
"""

T_REFER = """
Orientation vers {orga_def} pour une aide alimentaire.
{pat_s} est orienté[|e] vers {orgw_def} pour un accompagnement vers l'emploi.
Demande d'admission adressée {orge_a} pour {pat}.
Dossier transmis {orghosp_a}, service de psychiatrie adulte, à l'attention du {doc}.
Décision {orgmdph_de} : orientation en ESAT, taux d'incapacité compris entre {pct} et {pct}.
{pat} est adressé[|e] par {orgs_def} pour une demande de FSL.
Orientation de {child_n} vers {orgch_def} validée par {orgmdph_def} le {date_b}.
Relais pris par {pro_t} {orgs_de} à compter du {date_b}.
Nous orientons {pat_s} vers {orghosp_def} pour un bilan gériatrique.
{pat_s} a été adressé[|e] {orga_a} par {pro_t}.
"""

T_SYNTH = """
{pat}, {age}, divorcé[|e], [père|mère] de {nw} enfants, vit {town_a} depuis {year}.
Situation : {pat_s} est locataire {orgb_de} depuis {year} ; le loyer résiduel s'élève à {amount} après APL.
Ressources : {allow} ({amount}) et pension d'invalidité ({amount}).
Entourage : {relw}, domicilié[|e:rel] {town_a}, se rend disponible le week-end.
Santé : suivi régulier {orghosp_a} pour un diabète de type 2.
Évaluation GIR {gir} réalisée par {pro_t} {orgcd_de} le {date_b}.
Conclusion : la situation de {pat_s} nécessite une mesure de protection ; une requête sera adressée {orgtj_a}.
Parcours : né[|e] {country_en}, {pat_s} est arrivé[|e] {town_a} en {year}.
Logement : maison individuelle de plain-pied {town_a}, {dept_en}.
Environnement : le quartier est éloigné des commerces ; le bus le plus proche dessert {town}.
Droits ouverts : {allow}, {allow}, couverture maladie auprès {orgcm_de}.
Synthèse : {pat_s} est connu[|e] {orgs_de} depuis {year} pour des difficultés de gestion budgétaire.
Projet : entrée {orge_a} souhaitée par {pat_s} et par {relw}.
Scolarité : {child}, {age_child}, est inscrit[|e:child] {orgsch_a} ; suivi par {orgch_def}.
"""

T_ADMIN = """
Né[|e] le {bdate} {town_a}.
Adresse : {addr}.
Médecin traitant : {doc}.
Personne à prévenir : {relw}, {phone}.
Mesure de protection : curatelle renforcée, mandataire {orgm}.
Organisme payeur : {orgcp}.
Département : {deptc}.
Domiciliation administrative : {orgs}, {addr}.
Employeur : {orge}, {town}.
Établissement d'origine : {orgh}.
Référent[|e:pro] : {pro_t}, {orgs}.
Bénéficiaire : {pat_u}.
Lieu de naissance : {townc}.
Caisse d'affiliation : {orgcm}.
Né[|e] {country_en}, de nationalité étrangère.
"""

T_ADJ = """
Présents : {pro_n} {pro2_n} {pro3_n}.
Signé : {pro_n} {pro2_n}
Copie : {doc} {orgh}.
Expéditeur : {orgn} {town}.
Destinataire : {doc} {orgn} {town}.
Cc : {pro_t} {orgs}, {pro2_t} {orgh}.
Courrier adressé au {doc} {orgh}, service de neurologie.
Adresse de facturation : {orgn} {town}, {deptc}.
Contact : {pro_n} {orgn} {phone}.
Signataires : {pro_t} {pro2_t}, travailleurs sociaux.
{pro_n} {orgs} {town} {date_b}
Transmis par {orgn} {town} le {date_b}.
Émetteur : {orgn} {dept}.
Pour le directeur : {pro_n} {pro2_n}
Liste de diffusion : {pro_n} {pro2_n} {doc_n}.
"""

T_NOENT = """
Sortie d'hospitalisation prévue {date} ; retour à domicile avec passage infirmier {freq}.
L'intéressé[|e] perçoit {allow_def} depuis {dur} et ne dispose d'aucune autre ressource.
Le loyer résiduel s'élève à {amount} après déduction de l'APL.
Une demande d'aide ménagère de {n} heures par mois a été déposée {date}.
Le plan d'aide prévoit le portage des repas {freq} et une téléassistance.
Les impayés de loyer atteignent {amount}, soit {n} mois de retard.
Madame, Monsieur,
Je vous prie d'agréer, Madame, Monsieur, l'expression de mes salutations distinguées.
Nous restons à votre disposition pour tout renseignement complémentaire.
Dans l'attente de votre réponse, je reste joignable au {phone}.
Taux d'incapacité reconnu : {pct}.
Reste à vivre estimé à {amount} par mois pour un foyer de {n} personnes.
Aujourd'hui, la situation semble s'être stabilisée.
L'intéressé[|e] explique qu'[il|elle] n'a plus de chauffage depuis {dur}.
Lorsqu'[il|elle] est seul[|e], [il|elle] oublie de prendre son traitement.
Jusqu'à présent, aucune mesure de protection n'a été demandée.
Puisqu'aucun proche n'est disponible, une aide à domicile est indispensable.
[Il|Elle] m'a dit : « je ne veux pas quitter ma maison ».
C'est-à-dire qu'[il|elle] ne peut plus se laver seul[|e].
A-t-[il|elle] déposé sa demande de renouvellement ? À vérifier.
Le montant de l'APA à domicile est fixé à {amount} avec une participation de {pct}.
Les enfants ne se sont pas manifestés depuis {dur}.
[Il|Elle] dit se sentir isolé[|e] ; les voisins passent parfois le soir.
Sa fille passe {freq} pour les repas.
Son fils l'appelle {freq}, mais il habite loin.
Entretien d'une durée de {n}0 minutes au bureau.
Le logement est encombré et présente des risques de chute importants.
Une entrée en EHPAD est envisagée à moyen terme.
L'intéressé[|e] a été informé[|e] de ses droits et des démarches à effectuer.
La demande de RSA a été validée le {date_b} ; premier versement de {amount}.
Dossier de surendettement en cours d'instruction depuis {dur}.
[Il|Elle] m'informe qu'[il|elle] ne s'est pas rendu[|e] à l'hôpital.
Le médecin traitant n'a pas été consulté depuis {dur}.
Pas de réponse au {phone} ; nouvel essai prévu {date}.
Une orientation en ESAT pourrait être proposée après le stage de {dur}.
Les factures d'électricité s'élèvent à {amount} pour le dernier trimestre.
[Il|Elle] a payé {amount} de loyer le {date_b}, soit {pct} de la dette.
Aucun élément nouveau depuis la dernière visite.
Je l'ai trouvé[|e] très fatigué[|e], amaigri[|e] et peu loquace...
Appel reçu à {time}, la personne raccroche sans laisser de message.
Les démarches administratives sont à reprendre entièrement.
Selon l'infirmière, l'observance du traitement est correcte.
Le chèque d'accompagnement personnalisé a été remis en main propre ({amount}).
[Il|Elle] est d'accord pour un accueil temporaire de {dur}.
L'aide-soignante intervient {freq} pour le lever et le coucher.
Demande d'aide exceptionnelle : {amount} pour régler la facture d'eau.
La visite prévue {date} à {time} est reportée.
[Il|Elle] n'a pas souhaité que ses enfants soient informés.
L'évaluation a conclu à un GIR {gir}.
Qu'en est-il de la demande de logement adapté ?
[Il|Elle] ne sort plus de chez [lui|elle] depuis {dur}, d'après le gardien.
L'accueil de jour a lieu {freq}, de {time} à {time}.
Le taux d'effort atteint {pct} des ressources du ménage.
Lors de l'entretien, [il|elle] s'est montré[|e] coopérant[|e] et souriant[|e].
Une mesure d'accompagnement social personnalisé pourrait être proposée.
Prévoir un certificat médical de moins de {n} mois.
Il n'y a pas de téléassistance au domicile à ce jour.
Le portage de repas coûte {amount} par jour.
Les droits à la complémentaire santé solidaire expirent le {date_b}.
{helper} signale {symptom} depuis {dur}.
Selon {helper}, [il|elle] présente {symptom} et refuse {need}.
[Il|Elle] demande {need} et {need}.
Mise en place {need_de} à compter du {date_b}.
L'intéressé[|e] a refusé {need} {date}.
Pièce manquante : {docu}.
Merci de nous faire parvenir {docu} et {docu} avant le {date_b}.
Document reçu le {date_b} : {docu}.
[Il|Elle] n'a pas encore fourni {docu} ; relance prévue {date}.
Visite prévue {wd} à {time} avec {helper}.
{helper} passe {freq} ; [il|elle] semble plus apaisé[|e].
[Il|Elle] évoque {symptom} et des difficultés financières ({amount} de dettes).
Le reste à charge s'élève à {amount} par mois, soit {pct} des ressources.
Entretien téléphonique de {n}0 minutes : [il|elle] décrit {symptom}.
Le loyer de {amount} n'a pas été réglé depuis {dur}.
Une aide financière de {amount} est sollicitée pour {need}.
Depuis {dur}, [il|elle] ne sort plus seul[|e] et a besoin d'un accompagnement pour {need}.
La facture {need_de} s'élève à {amount}.
Rendez-vous fixé au {date_b} à {time} avec {helper}.
Constat de {symptom} lors de la visite du {date_b}.
L'intéressé[|e] a {age} et vit seul[|e] depuis {dur}.
[Il|Elle] a signé le document le {date_b} en présence {helper_de}.
Le dossier est en attente {docu_de} depuis {dur}.
« Je n'ai plus rien dans le frigo », m'a dit l'intéressé[|e].
[Il|Elle] m'a confié qu'[il|elle] ne dormait plus depuis {dur}.
J'ai rappelé l'intéressé[|e] à {time} ; pas de réponse.
C'est la {n}e fois que le rendez-vous est annulé.
« Je t'appelle demain », a-t-[il|elle] promis à sa fille.
[Il|Elle] dit : « on m'a coupé l'eau ».
Je l'ai accompagné[|e] à la pharmacie ; l'ordonnance était périmée.
Lorsqu'on lui propose {need}, [il|elle] répond qu'[il|elle] n'en a pas besoin.
Puisqu'[il|elle] n'a pas de compte bancaire, le versement se fait par mandat.
Jusqu'au {date_b}, les droits restent ouverts.
J'ai transmis {docu} au service instructeur {date}.
[Il|Elle] s'est présenté[|e] sans rendez-vous ; je l'ai reçu[|e] {n}0 minutes.
"""

T_FRAG = """
Vu ce jour.
RAS.
RAS ce jour.
Dossier en attente.
À revoir.
Pas de changement.
Absent[|e] au rendez-vous.
Dossier clos.
Situation stable.
Appel sans réponse.
Courrier envoyé.
Attestation remise en main propre.
Relance faite.
Urgent !
À suivre...
Vu à domicile.
Note d'information.
Documents manquants : avis d'imposition, RIB.
Aucune nouvelle depuis {dur}.
Visite annulée par l'intéressé[|e].
Pas de danger immédiat repéré.
Dossier complet le {date_b}.
Relance le {date_b}.
Pièces reçues le {date_b}.
Rappeler {date}.
Vu {date}.
Appel à {time}.
Montant accordé : {amount}.
Tél. : {phone}
GIR {gir}.
Refus de soins.
Accord de principe.
Sans objet.
Mail envoyé ce jour.
Situation préoccupante !
À voir avec le médecin ?
Entretien reporté au {date_b}.
Âgé[|e] de {age}.
"""

CLAUSES = """
{pat_s} vit seul[|e] {town_a} depuis le décès [de son épouse|de son époux] en {year}
[il|elle] perçoit {allow_def} pour un montant de {amount}
{relw} passe deux fois par semaine pour les courses
le {doc} a signalé une dégradation de l'état cognitif
une demande d'APA a été adressée {orgcd_a} {date}
le logement, situé au {addrn}, est humide et mal chauffé
[il|elle] refuse l'intervention {orga_de}
aucune mesure de protection n'est en place à ce jour
les dettes cumulées s'élèvent à {amount}
{orgcp_def} a suspendu le versement des prestations en attente de justificatifs
un dossier de surendettement sera déposé auprès de la Banque de France
[il|elle] est suivi[|e] {orgh_a} pour des troubles anxieux
{relw} souhaiterait une entrée en EHPAD {town_a}
les aides actuelles ne suffisent plus
le maintien à domicile paraît compromis
{pro_t} {orgs_de} a effectué une visite {date}
[il|elle] est hébergé[|e] chez {relw} {town_a}
une place en accueil de jour est envisagée {orge_a}
les enfants, qui vivent {dept_en}, ne peuvent pas se déplacer souvent
[il|elle] n'a pas de mutuelle et renonce à certains soins
le passage infirmier a lieu {freq}
[il|elle] a été hospitalisé[|e] {orghosp_a} après une chute
le bailleur, {orgb}, a engagé une procédure d'expulsion
une aide financière de {amount} a été accordée par {orgs_def}
l'assistante sociale {orghosp_de} a transmis une demande d'hébergement temporaire
[il|elle] se rend chaque mercredi {orga_a}
le taux d'incapacité a été fixé à {pct} par {orgmdph_def}
[il|elle] exprime le souhait de retourner {country_en}
{child}, {age_child}, est accueilli[|e:child] {orgch_a}
la situation sera réexaminée lors de la prochaine commission
{pat_s} ne se souvient plus de ses rendez-vous
les courses sont faites par une voisine
[il|elle] bénéficie d'un suivi {orgw_de} depuis {dur}
le médecin de l'EHPAD, le {doc}, a été informé
nous n'avons plus de nouvelles depuis {dur}
le compteur d'électricité a été coupé {date}
[il|elle] paie un loyer de {amount} charges comprises
{pro_r}, se charge de contacter {orgx_def}
"""

LONG_MAX_WORDS = 120
CURLY_RATE = 0.17  # share of sentences whose apostrophes are written ’ (~10% of all sentences)
CONNECTORS = [", ", " ; ", ", et ", ", mais ", " ; par ailleurs, ", " ; en outre, ", ", puis ",
              " ; de plus, ", ", alors que ", ", puisque ", " ; enfin, ", ", car ", ", si bien que "]
LONG_INTROS = ["", "", "Au cours de l'entretien, ", "Lors de la visite du {date_b}, ",
               "En synthèse, ", "Il ressort de l'évaluation que ", "Pour résumer, ",
               "Selon les éléments recueillis, ", "À ce jour, ", "D'après {relw}, "]


def _lines(block: str) -> list[str]:
    return [ln.rstrip() for ln in block.strip("\n").split("\n") if ln.strip()]


TEMPLATE_GROUPS = {
    "note": (_lines(T_NOTE), 0.16),
    "letter": (_lines(T_LETTER), 0.08),
    "phone": (_lines(T_PHONE), 0.07),
    "rdv": (_lines(T_RDV), 0.06),
    "meeting": (_lines(T_MEETING), 0.06),
    "refer": (_lines(T_REFER), 0.05),
    "synth": (_lines(T_SYNTH), 0.06),
    "admin": (_lines(T_ADMIN), 0.05),
    "adj": (_lines(T_ADJ), 0.05),
    "compound": (None, 0.07),
    "long": (None, 0.03),
    "noent": (_lines(T_NOENT), 0.22),
    "frag": (_lines(T_FRAG), 0.05),
}
CLAUSE_LIST = _lines(CLAUSES)

# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------
_TPL_RE = re.compile(r"\{(\w+)\}|\[([^\[\]|]*)\|([^\[\]|:]*)(?::(\w+))?\]")
_PERSON_RE = re.compile(r"(pat|rel|pro|doc|child)\d*$")
_ELIDE_BEFORE_RE = re.compile(r"(?:^|(?<=[\s(«\"]))([Dd]e|[Qq]ue|[Ll]orsque|[Pp]uisque) $")


class TemplateError(Exception):
    pass


def person(ctx: dict, gen: Gen, base: str) -> Person:
    if base not in ctx:
        kind = _PERSON_RE.match(base).group(1)
        if kind in ("rel", "child") and "pat" not in ctx:
            ctx["pat"] = Person(gen, "pat", ctx)
        p = Person(gen, kind, ctx)
        used = {(q.first, q.last) for q in ctx.values() if isinstance(q, Person)}
        while (p.first, p.last) in used:
            p = Person(gen, kind, ctx)
        ctx[base] = p
    return ctx[base]


def slot(name: str, gen: Gen, ctx: dict) -> list[Seg]:
    base, _, form = name.partition("_")
    r = gen.rng
    if base == "relw" or base.startswith("relw"):
        return person(ctx, gen, "rel" + base[4:]).render("w", gen)
    if _PERSON_RE.match(base):
        if form == "l":  # surname only, for "Madame {pat_l}"
            return [(person(ctx, gen, base).lastname(), "PER")]
        return person(ctx, gen, base).render(form, gen)
    if base == "townc":  # "Dieppe (76)"
        name_, code = gen.c(TOWNS)
        return [(name_, "LOC"), (f" ({code})", None)]
    if base == "town":
        return town_forms(gen.town(), form or "bare")
    if base in ("dept", "deptc"):
        name_, g, code = gen.dept()
        if base == "deptc":
            if form == "code":
                return [(code, None)]
            return [(name_, "LOC"), (f" ({code})", None)]
        return geo_forms(name_, g, form or "bare")
    if base == "region":
        n_, g = gen.c(REGIONS)
        return geo_forms(n_, g, form or "bare")
    if base == "country":
        n_, g = gen.c(COUNTRIES)
        if form == "de":  # "originaire d'Algérie / de Roumanie / du Maroc / des Comores"
            pre = ("des " if g == "pl" else "du " if g == "m" and not starts_vowel(n_)
                   else "d'" if starts_vowel(n_) else "de ")
            return [(pre, None), (n_, "LOC")]
        return geo_forms(n_, g, "au" if form == "en" else (form or "bare"))
    if base == "street":
        return [(gen.street(), "LOC")]
    if base == "addr":
        return gen.address()
    if base == "addrn":
        return gen.address(numbered=True)
    if base.startswith("org"):
        cat = base[3:] or "any"
        text, art = gen.org(cat)
        return art_forms(text, art, form or "bare", "ORG")
    if base == "allow":
        text, art = gen.c(ALLOWANCES)
        return art_forms(text, art, form or "bare", None)
    value = {
        "date": lambda: gen.date(bare=(form == "b")),
        "time": gen.time, "amount": gen.amount, "phone": gen.phone, "pct": gen.pct,
        "age": lambda: (f"{r.randint(2, 17)} ans" if form == "child" else gen.age()),
        "year": lambda: str(r.randint(1990, 2024)),
        "bdate": lambda: gen.birth_date(),
        "dur": lambda: gen.c(DURATIONS), "freq": lambda: gen.c(FREQS),
        "n": lambda: str(r.randint(2, 9)), "nw": lambda: gen.c(NUM_WORDS),
        "gir": lambda: str(r.randint(1, 6)),
        "need": lambda: de_phrase(gen.c(NEEDS), form), "symptom": lambda: gen.c(SYMPTOMS),
        "helper": lambda: de_phrase(gen.c(HELPERS), form),
        "docu": lambda: de_phrase(gen.c(DOCUMENTS), form),
        "wd": lambda: gen.c(WEEKDAYS), "month": lambda: gen.c(MONTHS),
    }.get(base)
    if value is None:
        raise TemplateError(f"unknown slot {{{name}}}")
    return [(value(), None)]


def _elide(text: str, nxt: str, spans: list) -> str:
    """'de'/'que' + vowel -> "d'"/"qu'" at a junction (literal, slot or alternation)."""
    if nxt and starts_vowel(nxt):
        e = _ELIDE_BEFORE_RE.search(text)
        if e:
            assert not spans or spans[-1][1] <= e.start(1)
            text = text[:e.start(1)] + e.group(1)[:-1] + "'"
    return text


def render(tpl: str, gen: Gen, ctx: dict) -> tuple[str, list[tuple[int, int, str]]]:
    text = ""
    spans: list[tuple[int, int, str]] = []
    pos = 0
    for m in _TPL_RE.finditer(tpl):
        text = _elide(text, tpl[pos:m.start()], spans) + tpl[pos:m.start()]
        pos = m.end()
        if m.group(1):
            segs = slot(m.group(1), gen, ctx)
            text = _elide(text, segs[0][0] if segs else "", spans)
            for s, lab in segs:
                if lab:
                    spans.append((len(text), len(text) + len(s), lab))
                text += s
        else:
            p = person(ctx, gen, m.group(4) or "pat")
            alt = m.group(2) if p.g == "m" else m.group(3)
            text = _elide(text, alt, spans) + alt
    text = _elide(text, tpl[pos:], spans) + tpl[pos:]
    return text, spans


def compound_template(gen: Gen, n_clauses: int, intro: bool) -> str:
    clauses = gen.rng.sample(CLAUSE_LIST, n_clauses)
    out = gen.c(LONG_INTROS) if intro else ""
    for i, cl in enumerate(clauses):
        if i:
            out += gen.c(CONNECTORS)
        out = _elide(out, cl, []) + cl
    return out + gen.c([".", ".", ".", " !", "..."])


_BAD_SURFACE = [
    (re.compile(r"(?<!\w)(?:[àÀ]|[Dd]e) (?:le|les|Le|Les) "), "missing contraction"),
    (re.compile(r"(?<!\w)(?:[Dd]e|[Qq]ue) [AEIOUÉÈÊÂÎÔaeiouéèêâîô]"), "missing elision"),
    (re.compile(r"\s[,.)]|\(\s|\s\s|^\s|\s$"), "bad spacing"),
]


def make_sentence(gen: Gen, group: str) -> tuple[list[str], list[str]]:
    r = gen.rng
    if group == "compound":
        tpl = compound_template(gen, r.choice([2, 2, 3]), intro=r.random() < 0.4)
        text, spans = render(tpl, gen, {})
    elif group == "long":  # several clauses, capped at LONG_MAX_WORDS words
        n = r.randint(5, 8)
        while True:
            tpl = compound_template(gen, n, intro=True)
            text, spans = render(tpl, gen, {})
            if n <= 2 or len(re.findall(r"\w+", text)) <= LONG_MAX_WORDS:
                break
            n -= 1
    else:
        tpl = gen.c(TEMPLATE_GROUPS[group][0])
        text, spans = render(tpl, gen, {})
    text = text[0].upper() + text[1:]
    for rx, why in _BAD_SURFACE:
        if rx.search(text):
            raise TemplateError(f"{why}: {text!r} (template {tpl!r})")
    if r.random() < CURLY_RATE:
        text = text.replace("'", "’")
    toks = tokenize(text)
    starts = {s: i for i, (_, s, _) in enumerate(toks)}
    ends = {e: i for i, (_, _, e) in enumerate(toks)}
    tags = ["O"] * len(toks)
    for s, e, lab in spans:
        if s not in starts or e not in ends:
            raise TemplateError(f"entity span not on token boundaries: {text[s:e]!r} in {text!r}")
        i, j = starts[s], ends[e]
        tags[i] = "B-" + lab
        for k in range(i + 1, j + 1):
            tags[k] = "I-" + lab
    return [t for t, _, _ in toks], tags


def generate(seed: int, sizes: list[int]) -> list[list[tuple[list[str], list[str]]]]:
    """Generate sum(sizes) unique sentences and split them.

    Sentences are deduplicated by token tuple before splitting, so no
    sentence occurs twice in a split or across splits.  The split is
    stratified on "has at least one entity" so that every split keeps the
    same share of entity-free sentences.
    """
    n_total = sum(sizes)
    rng = random.Random(seed)
    gen = Gen(rng)
    groups = list(TEMPLATE_GROUPS)
    weights = [TEMPLATE_GROUPS[g][1] for g in groups]
    seen: dict[tuple[str, ...], list[str]] = {}
    tries = 0
    while len(seen) < n_total:
        tries += 1
        if tries > n_total * 20:
            raise RuntimeError("cannot reach the requested number of unique sentences")
        group = rng.choices(groups, weights)[0]
        toks, tags = make_sentence(gen, group)
        key = tuple(toks)
        if key not in seen:
            seen[key] = tags
    items = [(list(k), v) for k, v in seen.items()]
    rng.shuffle(items)
    empty = [it for it in items if all(t == "O" for t in it[1])]
    full = [it for it in items if any(t != "O" for t in it[1])]
    splits, e0, f0 = [], 0, 0
    for i, size in enumerate(sizes):
        if i == len(sizes) - 1:
            ne = len(empty) - e0
        else:
            ne = round(len(empty) * size / n_total)
        part = empty[e0:e0 + ne] + full[f0:f0 + size - ne]
        e0, f0 = e0 + ne, f0 + size - ne
        rng.shuffle(part)
        splits.append(part)
    return splits


# --------------------------------------------------------------------------
# Validation and statistics
# --------------------------------------------------------------------------
def validate_example(obj: dict, where: str) -> list[str]:
    errs = []
    toks, tags = obj.get("tokens"), obj.get("ner_tags")
    if not isinstance(toks, list) or not isinstance(tags, list):
        return [f"{where}: tokens/ner_tags missing"]
    if len(toks) != len(tags):
        errs.append(f"{where}: {len(toks)} tokens vs {len(tags)} tags")
    if not toks:
        errs.append(f"{where}: empty sentence")
    for i, t in enumerate(toks):
        if not isinstance(t, str) or not t or any(ch.isspace() for ch in t):
            errs.append(f"{where}: bad token {i} {t!r}")
    prev = "O"
    for i, tag in enumerate(tags):
        if tag not in LABEL2ID:
            errs.append(f"{where}: unknown tag {tag!r}")
        elif tag.startswith("I-") and prev[2:] != tag[2:]:
            errs.append(f"{where}: {tag} after {prev} at {i}")
        prev = tag
    if not errs:
        re_toks = [t for t, _, _ in tokenize(detokenize(toks))]
        if re_toks != toks:
            errs.append(f"{where}: tokens are not stable under re-tokenization")
    return errs


def split_stats(rows: list[dict]) -> dict:
    st = {"sentences": len(rows), "tokens": 0, "no_entity": 0, "max_len": 0, "min_len": 10 ** 9,
          "adjacent": 0, "curly": 0, "long80": 0}
    st.update({t: 0 for t in ENTITY_TYPES})
    for obj in rows:
        tags = obj["ner_tags"]
        n = len(tags)
        st["tokens"] += n
        st["max_len"] = max(st["max_len"], n)
        st["min_len"] = min(st["min_len"], n)
        st["long80"] += n >= 80
        st["curly"] += any("’" in t for t in obj["tokens"])
        ents = [t[2:] for t in tags if t.startswith("B-")]
        for e in ents:
            st[e] += 1
        st["no_entity"] += not ents
        st["adjacent"] += sum(1 for a, b in zip(tags, tags[1:]) if a != "O" and b.startswith("B-"))
    return st


def check(out_dir: Path, splits: list[str]) -> bool:
    ok = True
    l2i_path = out_dir / "label2id.json"
    l2i = json.loads(l2i_path.read_text(encoding="utf-8"))
    if l2i != LABEL2ID:
        print(f"ERROR: {l2i_path} differs from {LABEL2ID}")
        ok = False
    keys_by_split = {}
    header = (f"{'split':6} {'sents':>6} {'tokens':>7} {'PER':>5} {'LOC':>5} {'ORG':>5} "
              f"{'no-ent%':>7} {'min':>4} {'max':>4} {'mean':>5} {'adj':>4} {'>=80':>4} {'’':>4}")
    print(header)
    total = []
    for sp in splits:
        path = out_dir / f"{sp}.jsonl"
        rows = []
        with path.open(encoding="utf-8") as fh:
            for ln, line in enumerate(fh, 1):
                obj = json.loads(line)
                errs = validate_example(obj, f"{path.name}:{ln}")
                for e in errs[:5]:
                    print("ERROR:", e)
                ok &= not errs
                rows.append(obj)
        keys_by_split[sp] = {tuple(o["tokens"]) for o in rows}
        if len(keys_by_split[sp]) != len(rows):
            print(f"ERROR: duplicate sentences inside {sp}")
            ok = False
        total += rows
        _print_stats(sp, split_stats(rows))
    _print_stats("all", split_stats(total))
    for i, a in enumerate(splits):
        for b in splits[i + 1:]:
            inter = keys_by_split[a] & keys_by_split[b]
            if inter:
                print(f"ERROR: {len(inter)} sentences shared by {a} and {b}")
                ok = False
    print("check:", "OK" if ok else "FAILED")
    return ok


def _print_stats(name: str, st: dict) -> None:
    n = max(st["sentences"], 1)
    print(f"{name:6} {st['sentences']:>6} {st['tokens']:>7} {st['PER']:>5} {st['LOC']:>5} "
          f"{st['ORG']:>5} {100 * st['no_entity'] / n:>6.1f}% {st['min_len']:>4} {st['max_len']:>4} "
          f"{st['tokens'] / n:>5.1f} {st['adjacent']:>4} {st['long80']:>4} {st['curly']:>4}")


def bracketed(obj: dict) -> str:
    """Tokens joined by spaces, entities bracketed: [Mme]O [Durand]PER ..."""
    out, cur, lab = [], [], None
    for t, tag in zip(obj["tokens"], obj["ner_tags"]):
        if tag.startswith("I-") and lab == tag[2:]:
            cur.append(t)
            continue
        if cur:
            out.append(f"[{' '.join(cur)}]{lab}")
            cur, lab = [], None
        if tag == "O":
            out.append(t)
        else:
            cur, lab = [t], tag[2:]
    if cur:
        out.append(f"[{' '.join(cur)}]{lab}")
    return " ".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent.parent / "data")
    ap.add_argument("--n-train", type=int, default=2400)
    ap.add_argument("--n-val", type=int, default=300)
    ap.add_argument("--n-test", type=int, default=300)
    ap.add_argument("--check", action="store_true", help="only validate the files already written")
    ap.add_argument("--show", type=int, default=0, help="print N random train sentences, bracketed")
    args = ap.parse_args(argv)
    splits = ["train", "val", "test"]
    if not args.check:
        sizes = [args.n_train, args.n_val, args.n_test]
        parts = generate(args.seed, sizes)
        args.out_dir.mkdir(parents=True, exist_ok=True)
        start = 0
        for sp, part in zip(splits, parts):
            with (args.out_dir / f"{sp}.jsonl").open("w", encoding="utf-8", newline="\n") as fh:
                for toks, tags in part:
                    fh.write(json.dumps({"tokens": toks, "ner_tags": tags}, ensure_ascii=False) + "\n")
            start += len(part)
        (args.out_dir / "label2id.json").write_text(
            json.dumps(LABEL2ID, indent=1) + "\n", encoding="utf-8", newline="\n")
        print(f"wrote {start} sentences to {args.out_dir} (seed {args.seed})")
    ok = check(args.out_dir, splits)
    if args.show:
        with (args.out_dir / "train.jsonl").open(encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh]
        for obj in random.Random(args.seed + 1).sample(rows, min(args.show, len(rows))):
            print("-", bracketed(obj))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
