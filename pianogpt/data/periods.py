"""Periods of composers: a shared row per period that each composer's own row adds to (n_periods)."""

PERIODS = ("unknown", "baroque and earlier", "classical", "early romantic", "late romantic", "twentieth century")
_MEMBERS = {
    1: "Byrd Frescobaldi Buxehude Pachelbel Bach Handel Scarlatti Couperin Leclair Cpe_bach",
    2: "Haydn Mozart Beethoven Clementi Hummel Dussek Diabelli Cramer Kuhlau Mehul Czerny Field Rossini Paganini",
    3: "Schubert Chopin Schumann Mendelssohn Liszt Alkan Burgmuller Heller Bellini Meyerbeer Flotow Verdi Wagner "
       "Gottschalk Raff",
    4: "Brahms Tchaikovsky Grieg Dvorak Borodin Mussorgsky Rimsky-Korsakov Balakirev Saint-Saens Faure Chabrier "
       "Chaminade Moszkowski Sinding Albeniz Granados Arensky Paderewski Godowsky Jensen Bruch Sarasate Wieniawski "
       "Strauss Sullivan Tarrega Lavallee Lange Reger",
    5: "Debussy Ravel Scriabin Rachmaninoff Satie Bartok Prokofiev Poulenc Schoenberg Shostakovich Stravinsky Sibelius "
       "Gershwin Ginastera Griffes Grainger Holst Joplin Barber Busoni Kreisler Lecuona Bloch Bliss Vaughan Friedman "
       "Chasins",
}
PERIOD_OF = {name.lower(): period for period, names in _MEMBERS.items() for name in names.split()}


def period_ids(composers):
    """The period of every composer id of a {name: id} table (0: unknown, and the unconditional row)."""
    ids = [0] * len(composers)
    for name, i in composers.items():
        ids[i] = PERIOD_OF.get(name.lower(), 0)
    return ids
