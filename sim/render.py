"""Offscreen MuJoCo rendering shared by every task family (Meta-World, robosuite, quadrotor)."""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.gl import render_error_hint


class FrameRenderer:
    """Offscreen MuJoCo rendering of one named camera at a fixed size, upright.

    Some fixed cameras (Meta-World's ``corner``/``corner2``/``corner3``/``corner4``) are defined with their
    image 'up' axis pointing down, so their raw frames are upside down; those frames are rotated by
    180 degrees (decided from the camera's up vector, so any upside-down fixed camera is fixed).
    """

    def __init__(self, model: Any, data: Any, camera: str, height: int, width: int, fast: bool = True):
        import mujoco

        cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        if cam_id < 0:
            names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]
            raise ValueError(f"unknown camera {camera!r}; this scene has {names}")
        self.camera = camera
        self.data = data
        try:
            self.renderer = mujoco.Renderer(model, height, width)
        except Exception as e:  # mujoco.FatalError: no GL platform (missing osmesa/egl, or set too late)
            raise render_error_hint(e) from e
        if fast:  # shadows and reflections cost ~5x on a software (osmesa) renderer
            self.renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
            self.renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        self.flip = False
        if model.cam_mode[cam_id] == mujoco.mjtCamLight.mjCAMLIGHT_FIXED and model.cam_bodyid[cam_id] == 0:
            mat = np.zeros(9)
            mujoco.mju_quat2Mat(mat, model.cam_quat[cam_id])
            self.flip = bool(mat.reshape(3, 3)[2, 1] < 0)  # world z of the camera's image-up axis

    def __call__(self) -> np.ndarray:
        self.renderer.update_scene(self.data, camera=self.camera)
        frame = self.renderer.render()
        if self.flip:
            frame = frame[::-1, ::-1]
        return np.ascontiguousarray(frame)

    def close(self) -> None:
        # mujoco.Renderer.close() destroys its GL context before freeing its MjrContext, so the GL objects
        # are deleted in whichever context is current: another live renderer's, whose frames then come
        # out as garbage. Free the MjrContext in its own context first.
        r = self.renderer
        gl, mjr = getattr(r, "_gl_context", None), getattr(r, "_mjr_context", None)
        if gl is not None and mjr is not None:
            gl.make_current()
            mjr.free()
            r._mjr_context = None
        r.close()

    def __del__(self):  # before mujoco.Renderer.__del__ does the unsafe close
        try:
            self.close()
        except Exception:
            pass

