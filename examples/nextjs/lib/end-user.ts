// Who is asking. A real app takes its signed-in user from its session; this example has no sign-in,
// so each browser gets a random id in a cookie. Every job is created with the user's tag
// (`user:<id>`): the service keeps one API key's jobs apart by it.

import { cookies } from "next/headers";

const COOKIE = "example_user";
const ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export interface EndUser {
  id: string;
  /** The tag every job of this user carries. */
  tag: string;
}

function user(id: string): EndUser {
  return { id, tag: `user:${id}` };
}

/** This browser's user, or null before its first job. */
export async function currentUser(): Promise<EndUser | null> {
  const id = (await cookies()).get(COOKIE)?.value;
  return id && ID.test(id) ? user(id) : null;
}

/** This browser's user, given an id (a cookie) on its first job. */
export async function signedInUser(): Promise<EndUser> {
  const known = await currentUser();
  if (known) return known;
  const id = crypto.randomUUID();
  (await cookies()).set(COOKIE, id, { httpOnly: true, sameSite: "lax", path: "/", maxAge: 60 * 60 * 24 * 30 });
  return user(id);
}
