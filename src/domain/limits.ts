/** Postgres `integer` is 32-bit signed: versions and other int columns never exceed this. */
export const PG_INT_MAX = 2_147_483_647
