"""The service's pages: the admin's review page and each user's own page.

Tornado templates (``templates/``) with autoescape on: evidence (command lines, host
names, user names) is untrusted text and shows as text. Users log in through the hub
(HubOAuth); the forms post back here with the hub's XSRF token.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from urllib.parse import urlencode

from tornado import web

from .database import Refused
from .handlers import BaseHandler, _since


def _when(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


class Page(BaseHandler):
    def render_page(self, template: str, **values) -> None:
        token = self.xsrf_token
        self.render(template, xsrf=token.decode() if isinstance(token, bytes) else token,
                    base=self.settings["base_url"], when=_when, json=json,
                    message=self.service.warning_message, policy_url=self.service.policy_url,
                    me=self.current_user["name"], **values)

    def back(self, page: str, **query) -> None:
        query = {k: v for k, v in query.items() if v}
        self.redirect(self.settings["base_url"] + page + ("?" + urlencode(query) if query else ""))


class UserPage(Page):
    """A user's incidents, strikes and appeals; a form to appeal each incident."""

    @web.authenticated
    async def get(self) -> None:
        me = self.current_user["name"]
        standing = await self.db.standing(me, self.service.warning_message)
        self.render_page("user.html", standing=standing,
                         incidents=await self.db.incidents(user=me),
                         reviewer=await self.is_reviewer(), error=self.get_argument("error", ""))

    @web.authenticated
    async def post(self) -> None:
        try:
            await self.db.appeal(self.get_body_argument("incident"), self.current_user["name"],
                           self.get_body_argument("text", ""))
        except Refused as err:
            return self.back("", error=str(err))
        self.back("")


class AdminPage(Page):
    """Every user's incidents (filtered), incidents grouped by package, open appeals, bans."""

    @web.authenticated
    async def get(self) -> None:
        await self._reviewer_or_403()
        filters = {name: self.get_argument(name, "") for name in
                   ("user", "category", "package", "since")}
        incidents = await self.db.incidents(user=filters["user"] or None,
                                      category=filters["category"] or None,
                                      package=filters["package"] or None, since=_since(self))
        users = sorted({i["user"] for i in incidents})
        self.render_page("admin.html", filters=filters, incidents=incidents,
                         packages=await self.db.packages(),
                         appeals=await self.db.appeals("pending"),
                         bans=await self.db.banned_users(),
                         standings={u: await self.db.standing(u) for u in users}, reviewer=True,
                         error=self.get_argument("error", ""))

    @web.authenticated
    async def post(self) -> None:
        by = await self._reviewer_or_403()
        action = self.get_body_argument("do")
        user = self.get_body_argument("user", "")
        try:
            if action == "clear":
                await self.db.clear_strikes(user, by, self.get_body_argument("note", ""))
            elif action == "ban":
                await self.db.ban(user, by, self.get_body_argument("reason", ""))
                await self.gone_too_far(user)
            elif action == "unban":
                await self.db.unban(user, by)
            elif action in ("package-counts", "package-free"):
                verdict = await self.db.judge_package(
                    self.get_body_argument("name"), self.get_body_argument("version", ""),
                    action == "package-counts", by, self.get_body_argument("note", ""))
                if verdict["counts"]:
                    for name in {i["user"] for i in await self.db.incidents(package=verdict["name"])}:
                        await self.gone_too_far(name)
            elif action in ("accepted", "rejected"):
                await self.db.resolve(int(self.get_body_argument("appeal")), action, by,
                                self.get_body_argument("reply", ""))
            else:
                raise web.HTTPError(400, "unknown action")
        except (Refused, ValueError) as err:
            return self.back("admin", error=str(err))
        self.back("admin")

    async def _reviewer_or_403(self) -> str:
        if not await self.is_reviewer():
            raise web.HTTPError(403, "the admin page needs the scope custom:colab-guard:review")
        return self.current_user["name"]
