"""``highway``: driving on highway-env's multi-lane motorway, with language missions and an IDM/MOBIL expert.

Observation: a top-down frame that follows the ego car (``image_size`` px high, ``image_width`` px wide, default
square; ``view_metres`` across; the ego car ``centering`` of the width from the left, 0.3 by default; at the default
1.33 px/m highway-env draws every car as a dark outline, from 2 px/m on the ego car is green and the others blue),
the mission as the instruction, and ``Observation.state``, stored with demonstrations for the ``state`` encoder's
reader: by default (``state: kinematics``) highway-env's kinematics of the ego car and its 4 nearest neighbours
(presence, x, y, vx, vy; relative to the ego car, scaled as highway-env scales them) followed by the ego speed and
the cruise speed set by the meta-actions (both m/s / 40); with ``state: lanes`` what the frame shows lane by lane
(``LANE_STATE``: for the lanes left, own and right the gap to the nearest car ahead and behind within the frame and
its closing speed, then the ego car's offset, heading, speed and set speed).

The default square frame shows 34 m ahead, and the IDM expert brakes for a slower car 35-100 m ahead (2,270 of its
2,521 "slower" decisions on 400 episodes, 90 %): an agent cannot see why. The wide view (``image_size=40 image_width=160
view_metres=120 centering=0.2``: 96 m ahead, 24 m behind, 1.33 px/m) shows it; bench/actions/README.md.

``speedometer`` (default on) draws the dashboard into the bottom 4 rows of the frame: a yellow bar as long as the
speed (10 → 35 m/s across the frame) and below it a white bar for the set cruise speed (15/20/25/30 m/s; none with
continuous actions). A top-down frame alone cannot show the ego car's speed (the camera follows it and the lane
marks repeat), and the expert's faster/slower depends on it: without the dashboard a cloned policy learns "idle".

Missions (``mission``; ``random`` draws one per episode from its seed):

* ``cruise`` — "drive on without crashing": success = no crash for the whole episode;
* ``keep_right`` — "keep to the right lane": no crash, and at least ``right_share`` of the steps after the
  first 3 in the rightmost lane;
* ``overtake`` — "overtake the car ahead": no crash, and the episode ends with the ego car in front of the car
  that was nearest ahead of it in its lane at the start.

Actions (``actions``): ``meta`` — highway-env's discrete meta-actions (LANE_LEFT, IDLE, LANE_RIGHT, FASTER, SLOWER:
its own lane-keeping and speed controllers below them, 1 decision a second; ``decisions_per_second`` 2 or 5 decides
more often, the simulation stepping 5 times per decision as at 1 Hz); ``continuous`` — acceleration and
steering in [-1, 1] (mapped to [-5, 5] m/s² and [-45°, 45°]), 5 decisions a second.

The expert is highway-env's own IDM/MOBIL driver in the ego car's place: a shadow ``IDMVehicle`` built from the ego
state (the ego car taken off the road while the shadow looks around) chooses the lane (MOBIL; the mission biases
it: the rightmost lane when the change is safe for ``keep_right``, any lane with a gain for ``overtake``) and the
acceleration (IDM towards the top speed); its decision is mapped to the action space. A planned lane change goes
before slowing down, which is right for the expert (it is never that close) but leaves the states a learner
reaches, a car a few metres ahead, labelled "change lane" rather than "slow down"; ``brake_room`` (metres, default 0:
off) makes it say "slower" first whenever the car ahead in its own lane would be nearer than that after the next
decision and one more second (a lane change already under way goes on). Per-episode measures
(``episode_metrics``): crashed, and how (``crash_into_ahead``, ``crash_from_behind``, ``crash_side``,
``crash_off_road``), mean speed (m/s), distance travelled (m), share of steps in the rightmost lane, lane changes,
mission success. The expert also says why (``expert_narration``): "the slow car is ahead and the left
lane is free: change lane left", "the car ahead is close: slow down", ... — stored with demonstrations for the
``demos`` reader's ``reasoning: narrate`` (say why, then act).

highway-env renders offscreen with pygame; do not set ``SDL_VIDEODRIVER=dummy`` (frames come out black).
"""

from __future__ import annotations

import os
from typing import Any, Literal

import numpy as np

from omniplug.actions.space import ActionSpace
from omniplug.envs.base import ENVS, Environment, Observation, Step, missing_simulator

MISSIONS = {
    "cruise": "drive on without crashing",
    "keep_right": "keep to the right lane",
    "overtake": "overtake the car ahead",
}
META_ACTIONS = ("LANE_LEFT", "IDLE", "LANE_RIGHT", "FASTER", "SLOWER")  # highway-env's DiscreteMetaAction order
# what the expert says before it acts ({side}: left | right)
WHY = {
    "pass": "the slow car is ahead and the {side} lane is free: change lane {side}",
    "keep_right": "the right lane is free: change lane right",
    "faster_lane": "the {side} lane moves faster: change lane {side}",
    "changing": "changing lane {side}",
    "close": "the car ahead is close: slow down",
    "clear": "the lane ahead is clear: speed up",
    "steady": "keep the lane and the speed",
}


def driving_texts() -> list[str]:
    """Every text of the environment: missions, action names and the expert's narrations (for a tokenizer)."""
    sides = [t.format(side=side) for t in WHY.values() for side in ("left", "right")]
    return [*MISSIONS.values(), " ".join(a.lower() for a in META_ACTIONS), *dict.fromkeys(sides)]
ACCELERATION, STEERING = 5.0, np.pi / 4  # ContinuousAction's ranges: [-x, x]


@ENVS.register("highway")
class HighwayEnv(Environment):
    def __init__(self, *, mission: Literal["random", "cruise", "keep_right", "overtake"] = "random",
                 actions: Literal["meta", "continuous"] = "meta", image_size: int = 64, view_metres: float = 48.0,
                 lanes: int = 3, vehicles: int = 20, density: float = 1.0, duration: int = 30,
                 right_share: float = 0.8, speedometer: bool = True, decisions_per_second: int = 1,
                 brake_room: float = 0.0, image_width: int | None = None, centering: float = 0.3,
                 state: Literal["kinematics", "lanes"] = "kinematics") -> None:
        if mission != "random" and mission not in MISSIONS:
            raise ValueError(f"highway: unknown mission {mission!r}; choose random or one of {sorted(MISSIONS)}")
        if actions not in ("meta", "continuous"):
            raise ValueError(f"highway: actions must be 'meta' or 'continuous', got {actions!r}")
        if image_size < 16 or view_metres <= 0 or lanes < 2 or duration < 1 or not 0 < right_share <= 1:
            raise ValueError("highway: image_size >= 16, view_metres > 0, lanes >= 2, duration >= 1 and right_share "
                             "in (0, 1] are required")
        image_width = image_size if image_width is None else image_width
        if not isinstance(image_width, int) or image_width < 16:
            raise ValueError(f"highway: image_width is pixels (>= 16; default image_size), got {image_width!r}")
        if not 0.05 <= centering <= 0.95:
            raise ValueError(f"highway: centering is where the ego car sits across the frame (0.05-0.95 of its width "
                             f"from the left), got {centering!r}")
        if state not in ("kinematics", "lanes"):
            raise ValueError(f"highway: state must be 'kinematics' or 'lanes', got {state!r}")
        if not isinstance(brake_room, (int, float)) or isinstance(brake_room, bool) or brake_room < 0:
            raise ValueError(f"highway: brake_room is metres (>= 0; 0 = off), got {brake_room!r}")
        if brake_room and actions != "meta":
            raise ValueError("highway: brake_room is an option of the meta-actions' expert (the continuous expert "
                             "brakes through IDM's own acceleration)")
        if actions == "meta" and decisions_per_second not in (1, 2, 5):
            raise ValueError(f"highway: decisions_per_second must be 1, 2 or 5 with meta-actions, got {decisions_per_second!r}")
        if actions == "continuous" and decisions_per_second != 1:
            raise ValueError("highway: decisions_per_second is an option of meta-actions (continuous control decides "
                             "5 times a second)")
        if os.environ.get("SDL_VIDEODRIVER") == "dummy":
            raise RuntimeError("highway: SDL_VIDEODRIVER=dummy makes highway-env render black frames; unset it")
        try:
            import gymnasium as gym
            import highway_env  # noqa: F401  (registers the environments)
        except ImportError as exc:
            raise missing_simulator("highway-env", exc) from None
        self.mission_option, self.actions, self.right_share = mission, actions, right_share
        self.speedometer = bool(speedometer)
        self.brake_room = float(brake_room)
        self.policy_hz = decisions_per_second if actions == "meta" else 5
        self.state_kind = state
        self.view_ahead, self.view_behind = (1.0 - centering) * view_metres, centering * view_metres  # metres
        self._horizon = 1.0 / self.policy_hz + 1.0  # seconds a lane change must leave room for
        config = {
            "observation": {"type": "Kinematics", "vehicles_count": 5, "features": ["presence", "x", "y", "vx", "vy"],
                            "absolute": False, "normalize": True},
            "action": {"type": "DiscreteMetaAction", "target_speeds": [15, 20, 25, 30]} if actions == "meta" else
                      {"type": "ContinuousAction", "acceleration_range": (-ACCELERATION, ACCELERATION),
                       "steering_range": (-STEERING, STEERING)},
            "lanes_count": lanes, "vehicles_count": vehicles, "vehicles_density": density, "duration": duration,
            "simulation_frequency": 5 * self.policy_hz if actions == "meta" else 15, "policy_frequency": self.policy_hz,
            "screen_width": image_width, "screen_height": image_size, "scaling": image_width / view_metres,
            "centering_position": [centering, 0.5], "offscreen_rendering": True, "render_agent": True,
        }
        self._env = gym.make("highway-fast-v0", render_mode="rgb_array", config=config)
        self.max_steps = duration * self.policy_hz
        if actions == "meta":
            self.action_space = ActionSpace(kind="discrete", names=tuple(a.lower() for a in META_ACTIONS))
        else:
            self.action_space = ActionSpace(kind="continuous", dim=2, low=(-1.0, -1.0), high=(1.0, 1.0))
        self.mission = "cruise"
        self._kinematics: np.ndarray | None = None
        self._narration: str | None = None

    # --- episode ----------------------------------------------------------------------------------------
    @property
    def road(self):
        return self._env.unwrapped.road

    @property
    def ego(self):
        return self._env.unwrapped.vehicle

    def reset(self, seed: int) -> Observation:
        if self.mission_option == "random":
            self.mission = sorted(MISSIONS)[int(np.random.default_rng(int(seed)).integers(len(MISSIONS)))]
        else:
            self.mission = self.mission_option
        self._kinematics, _ = self._env.reset(seed=int(seed))
        ego = self.ego
        self._start_x = float(ego.position[0])
        self._target = self._slow_car_ahead() if self.mission == "overtake" else None
        self._speeds: list[float] = []
        self._right: list[bool] = []
        self._lane_changes = 0
        self._lane = self._goal_lane = ego.lane_index
        self._steps = 0
        self._crash: str | None = None
        self._narration: str | None = None
        return self._observe()

    def _slow_car_ahead(self, gap: float = 25.0, speed: float = 18.0):
        """The overtake mission's car: the nearest car ahead in the ego lane, set ``gap`` metres ahead, driving at
        ``speed`` m/s and keeping its lane (a car is brought over from elsewhere when the lane ahead is empty)."""
        ego, road = self.ego, self.road
        lane = road.network.get_lane(ego.lane_index)
        ahead = road.neighbour_vehicles(ego, ego.lane_index)[0]
        if ahead is None:
            ahead = min((v for v in road.vehicles if v is not ego), key=lambda v: abs(v.position[0] - ego.position[0]))
        s = lane.local_coordinates(ego.position)[0] + gap
        if lane.local_coordinates(ahead.position)[0] > s:  # farther than gap: bring it closer
            ahead.position = lane.position(s, 0)
        ahead.heading = lane.heading_at(lane.local_coordinates(ahead.position)[0])
        ahead.lane_index = ahead.target_lane_index = ego.lane_index
        ahead.lane = lane
        ahead.speed = ahead.target_speed = speed
        ahead.enable_lane_change = False
        return ahead

    def _observe(self) -> Observation:
        image = np.array(self._env.render(), dtype=np.uint8)
        if self.speedometer:
            _draw_speedometer(image, self.ego.speed, self.set_speed())
        return Observation(image=image, instruction=MISSIONS[self.mission], state=self.state())

    def show(self, image: np.ndarray) -> np.ndarray:
        """A green box around the ego car (at 1.33 px/m highway-env draws every car as the same dark outline; the
        camera keeps the ego car at ``centering`` of the width, half the height)."""
        out = image.copy()
        height, width = out.shape[:2]
        scale = width / (self.view_behind + self.view_ahead)  # px per metre
        x, y = self.view_behind * scale, height / 2
        half_l, half_w = 2.5 * scale + 1, 1.0 * scale + 1  # highway-env's cars: 5 m x 2 m
        x0, x1 = int(np.clip(round(x - half_l), 0, width - 1)), int(np.clip(round(x + half_l), 0, width - 1))
        y0, y1 = int(np.clip(round(y - half_w), 0, height - 1)), int(np.clip(round(y + half_w), 0, height - 1))
        green = np.array([40, 220, 40], dtype=np.uint8)
        out[y0, x0:x1 + 1], out[y1, x0:x1 + 1], out[y0:y1 + 1, x0], out[y0:y1 + 1, x1] = green, green, green, green
        return out

    def set_speed(self) -> float | None:
        """The cruise speed the meta-actions set (m/s); None with continuous actions."""
        ego = self.ego
        return float(ego.target_speeds[ego.speed_index]) if self.actions == "meta" else None

    def state(self) -> np.ndarray:
        if self.state_kind == "lanes":
            return self.lane_state()
        kinematics = np.asarray(self._kinematics, dtype=np.float32).reshape(-1)
        dashboard = np.array([self.ego.speed, self.set_speed() or 0.0], dtype=np.float32) / SPEED_SCALE
        return np.concatenate([kinematics, dashboard])

    def lane_state(self) -> np.ndarray:
        """What the frame shows, lane by lane (``state: lanes``; ``LANE_STATE`` names the entries): for the lane left of
        the ego car, its own and the one right of it, whether it exists, the gap to the nearest car ahead in it and how
        fast that car closes in, the same for the nearest car behind; then the ego car's offset from its lane's centre,
        its heading, speed and set speed. Gaps are metres between the cars' centres along the road, capped at the
        frame's edge (``view_ahead`` / ``view_behind``: a car beyond it reads as none there, closing speed 0); a
        missing lane reads as gaps 0."""
        ego, road = self.ego, self.road
        lanes = road.network.all_side_lanes(ego.lane_index)
        values: list[float] = []
        for side in (-1, 0, 1):
            index = ego.lane_index[2] + side
            if not 0 <= index < len(lanes):
                values += [0.0, 0.0, 0.0, 0.0, 0.0]
                continue
            front, rear = road.neighbour_vehicles(ego, (ego.lane_index[0], ego.lane_index[1], index))
            gap_front = np.inf if front is None else float(front.position[0] - ego.position[0])
            gap_rear = np.inf if rear is None else float(ego.position[0] - rear.position[0])
            seen_front, seen_rear = gap_front <= self.view_ahead, gap_rear <= self.view_behind
            values += [1.0, min(gap_front, self.view_ahead), float(ego.speed - front.speed) if seen_front else 0.0,
                       min(gap_rear, self.view_behind), float(rear.speed - ego.speed) if seen_rear else 0.0]
        lane = road.network.get_lane(ego.lane_index)
        offset = float(lane.local_coordinates(ego.position)[1])
        heading = float(ego.heading - lane.heading_at(lane.local_coordinates(ego.position)[0]))
        values += [offset, heading, float(ego.speed) / SPEED_SCALE, (self.set_speed() or 0.0) / SPEED_SCALE]
        return np.asarray(values, dtype=np.float32)

    def rightmost(self) -> bool:
        return self.ego.lane_index[2] == len(self.road.network.all_side_lanes(self.ego.lane_index)) - 1

    def step(self, action: Any) -> Step:
        if self.actions == "meta":
            a: Any = int(np.asarray(action).reshape(-1)[0])
            if not 0 <= a < len(META_ACTIONS):
                raise ValueError(f"highway: meta-action {a} is not one of 0..{len(META_ACTIONS) - 1} ({META_ACTIONS})")
        else:
            a = np.clip(np.asarray(action, dtype=np.float32).reshape(2), -1.0, 1.0)
        self._kinematics, reward, terminated, truncated, _ = self._env.step(a)
        ego = self.ego
        self._steps += 1
        self._speeds.append(float(ego.speed))
        self._right.append(self.rightmost())
        if ego.lane_index[2] != self._lane[2]:
            self._lane_changes += 1
            self._lane = ego.lane_index
        if ego.crashed and self._crash is None:
            self._crash = self._crash_kind()
        done = bool(terminated or truncated) or self._steps >= self.max_steps
        return Step(observation=self._observe(), reward=float(reward), done=done, success=bool(done and self.succeeded()))

    def succeeded(self) -> bool:
        if self.ego.crashed:
            return False
        if self.mission == "keep_right":
            settled = self._right[3 * self.policy_hz:] or self._right
            return float(np.mean(settled)) >= self.right_share
        if self.mission == "overtake":
            return self._target is None or bool(self.ego.position[0] > self._target.position[0])
        return True

    def episode_metrics(self) -> dict[str, float]:
        return {"crashed": float(self.ego.crashed), "mean_speed": float(np.mean(self._speeds)) if self._speeds else 0.0,
                "distance": float(self.ego.position[0] - self._start_x),
                "right_lane_share": float(np.mean(self._right)) if self._right else 0.0,
                "lane_changes": float(self._lane_changes), f"success_{self.mission}": float(self.succeeded()),
                **{f"crash_{kind}": float(self._crash == kind) for kind in CRASH_KINDS}}

    def _crash_kind(self) -> str:
        """Which way the ego car crashed (``CRASH_KINDS``), from the nearest other car that crashed with it: the
        side the two cars touch is the one they overlap least along (nose to tail: the car ahead or behind; flank
        to flank: side by side)."""
        ego = self.ego
        others = [v for v in self.road.vehicles if v is not ego and v.crashed]
        if not others:
            return "off_road"
        other = min(others, key=lambda v: float(np.linalg.norm(v.position - ego.position)))
        ahead, across = (float(d) for d in other.position - ego.position)  # the road runs along x
        if ego.LENGTH - abs(ahead) > ego.WIDTH - abs(across):
            return "side"
        return "into_ahead" if ahead > 0 else "from_behind"

    # --- the expert -----------------------------------------------------------------------------------
    def _shadow(self):
        """highway-env's IDM/MOBIL driver in the ego car's place, aiming for the top speed."""
        from highway_env.vehicle.behavior import IDMVehicle

        ego = self.ego
        shadow = IDMVehicle(self.road, ego.position, heading=ego.heading, speed=ego.speed,
                            target_lane_index=self._goal_lane, target_speed=float(max(getattr(ego, "target_speeds", [30.0]))))
        shadow.timer = shadow.LANE_CHANGE_DELAY + 1.0  # decide now, not on MOBIL's own clock
        return shadow

    def _passing(self) -> bool:
        return self.mission == "overtake" and self._target is not None and \
            self.ego.position[0] < self._target.position[0] + 10.0

    def _target_lane(self, shadow) -> tuple:
        """The lane the expert wants: MOBIL's choice, or for keep_right the rightmost lane when moving there is
        safe for the car behind and for the ego car."""
        lane = self.ego.lane_index
        if self._passing() and self._target.lane_index == lane:  # pull out: the safe side lane with most room
            sides = []
            for side in self.road.network.side_lanes(lane):
                front = self.road.neighbour_vehicles(shadow, side)[0]
                room = np.inf if front is None else front.position[0] - shadow.position[0]
                if _safe(shadow, side, self._horizon) and room > 15.0:
                    sides.append((room, side))
            return max(sides)[1] if sides else lane
        if self.mission == "keep_right":
            right = (lane[0], lane[1], lane[2] + 1)
            if right in self.road.network.side_lanes(lane) and _safe(shadow, right, self._horizon):
                return right
            return lane
        shadow.target_lane_index = lane
        shadow.change_lane_policy()
        target = shadow.target_lane_index
        return target if target == lane or _safe(shadow, target, self._horizon) else lane

    def expert_action(self) -> Any:
        ego, road = self.ego, self.road
        road.vehicles.remove(ego)  # the shadow stands where the ego car is: it must not see it
        try:
            if self.actions == "meta":  # the ego car's own lane controller holds the lane it was sent to
                self._goal_lane = ego.target_lane_index
            changing = ego.lane_index != self._goal_lane
            shadow = self._shadow()
            target = self._goal_lane if changing else self._target_lane(shadow)
            self._goal_lane = target
            accel, room, own_room = np.inf, np.inf, np.inf
            for lane in {ego.lane_index, target}:  # IDM in the lane it is in and the lane it goes to
                front, rear = road.neighbour_vehicles(shadow, lane)
                accel = min(accel, shadow.acceleration(ego_vehicle=shadow, front_vehicle=front, rear_vehicle=rear))
                if front is not None:  # the gap left after the time to the next decision and one more second
                    left = front.position[0] - ego.position[0] - max(ego.speed - front.speed, 0) * self._horizon
                    room = min(room, left)
                    own_room = left if lane == ego.lane_index else own_room
            steering = shadow.steering_control(target)
        finally:
            road.vehicles.insert(0, ego)
        side = "right" if target[2] > ego.lane_index[2] else "left"
        why = self._why_change(side) if target != ego.lane_index else None
        if self.actions == "continuous":
            if why is None:
                why = WHY["close"] if accel < -1.0 or room < 10.0 else WHY["clear"] if accel > 0.5 else WHY["steady"]
            elif changing:
                why = WHY["changing"].format(side=side)
            self._narration = why
            return np.array([np.clip(accel / ACCELERATION, -1, 1), np.clip(steering / STEERING, -1, 1)], dtype=np.float32)
        if not changing and why is not None and self.brake_room and own_room < self.brake_room and ego.speed_index > 0:
            self._narration = WHY["close"]  # brake_room: the car ahead comes first, the lane change next decision
            return META_ACTIONS.index("SLOWER")
        if not changing and why is not None:
            self._narration = why
            return META_ACTIONS.index("LANE_RIGHT" if side == "right" else "LANE_LEFT")
        if (accel < -1.0 or room < 10.0) and ego.speed_index > 0:
            self._narration = WHY["close"]
            return META_ACTIONS.index("SLOWER")
        if accel > 0.5 and ego.speed_index < len(ego.target_speeds) - 1:
            self._narration = WHY["clear"]
            return META_ACTIONS.index("FASTER")
        self._narration = WHY["changing"].format(side=side) if changing else WHY["steady"]
        return META_ACTIONS.index("IDLE")

    def _why_change(self, side: str) -> str:
        if self._passing():
            return WHY["pass"].format(side=side)
        if self.mission == "keep_right":
            return WHY["keep_right"]
        return WHY["faster_lane"].format(side=side)

    def expert_narration(self) -> str | None:
        """The reason for the last expert action, from the state the expert decided on."""
        return self._narration

    def close(self) -> None:
        self._env.close()


# how the ego car crashed, per episode (episode_metrics: crash_<kind>, one of them 1.0 when crashed): it drove into
# the car ahead in its lane, a car ran into it from behind, the two cars were side by side (a lane change), or no
# other car was involved
CRASH_KINDS = ("into_ahead", "from_behind", "side", "off_road")
SPEED_SCALE = 40.0  # m/s per unit of the state's dashboard entries
# the entries of `state: lanes` (HighwayEnv.lane_state), in order: metres, m/s (closing: positive when the gap shrinks),
# radians, speeds / SPEED_SCALE
LANE_STATE = tuple(f"{lane}_{what}" for lane in ("left", "own", "right") for what in
                   ("exists", "gap_ahead", "closing_ahead", "gap_behind", "closing_behind")) + \
    ("offset", "heading", "speed", "set_speed")
# what one unit of the state's kinematics is (highway-env's `normalize`: x in +-5, vx / vy in +-2 times
# Vehicle.MAX_SPEED = 40 m/s, y in +-4 m per lane of the road); tests/test_driving.py checks them against the road
X_METRES = 200.0
VX_METRES_PER_S = 80.0
SPEEDOMETER_RANGE = (10.0, 35.0)  # m/s at the left and right edge of the frame


def _draw_speedometer(image: np.ndarray, speed: float, set_speed: float | None) -> None:
    """Rows -4..-3: the speed as a yellow bar; rows -2..-1: the set cruise speed as a white bar (in place)."""
    lo, hi = SPEEDOMETER_RANGE
    width = image.shape[1]

    def length(v: float) -> int:
        return int(round(width * float(np.clip((v - lo) / (hi - lo), 0.0, 1.0))))

    image[-4:] = (40, 40, 40)
    image[-4:-2, : length(speed)] = (250, 200, 0)
    if set_speed is not None:
        image[-2:, : length(set_speed)] = (255, 255, 255)


def _safe(shadow, lane_index, horizon: float = 2.0) -> bool:
    """MOBIL's safety criterion (after the change neither the new follower nor the ego car brakes harder than MOBIL
    allows), and room for ``horizon`` seconds at today's speeds: with one decision a second the ego car cannot brake
    out of a gap that closes before its next decision."""
    preceding, following = shadow.road.neighbour_vehicles(shadow, lane_index)
    limit = -shadow.LANE_CHANGE_MAX_BRAKING_IMPOSED
    if shadow.acceleration(ego_vehicle=following, front_vehicle=shadow) < limit or \
            shadow.acceleration(ego_vehicle=shadow, front_vehicle=preceding) < limit:
        return False
    x, v = shadow.position[0], shadow.speed
    if preceding is not None and preceding.position[0] - x - max(v - preceding.speed, 0.0) * horizon < 12.0:
        return False
    return following is None or x - following.position[0] - max(following.speed - v, 0.0) * horizon >= 8.0
