@echo off
rem Double-click or run: sets up .venv (first time, and again when requirements change),
rem then opens the GUI. "launch.bat test" runs the test suite instead.
rem Extra arguments go to gui.py (e.g. --port 7861 --no-browser) or to pytest.
rem
rem Environment:
rem   PYTHON            the Python to build .venv with (3.11 or newer; default: py -3, then python)
rem   TORCH_INDEX_URL   where torch comes from, e.g. https://download.pytorch.org/whl/cu128 for an
rem                     NVIDIA GPU build; unset = pip's own configuration (the CPU build from PyPI)
setlocal EnableExtensions EnableDelayedExpansion
cd /d "%~dp0"

set TORCH_VERSION=2.13.0
set VENV=.venv
set MODE=gui
if /i "%~1"=="test" (
  set MODE=test
  shift
)
rem Everything after the optional "test" goes through unchanged.
set ARGS=
:collect
if "%~1"=="" goto collected
set ARGS=!ARGS! %1
shift
goto collect
:collected

if not exist "%VENV%\Scripts\python.exe" (
  if "%PYTHON%"=="" (
    py -3 -c "import sys; sys.exit(sys.version_info < (3, 11))" >nul 2>&1 && set PYTHON=py -3
  )
  if "!PYTHON!"=="" set PYTHON=python
  !PYTHON! -c "import sys; sys.exit(sys.version_info < (3, 11))" >nul 2>&1
  if errorlevel 1 (
    echo error: Python 3.11 or newer is needed. Install it from python.org, or set PYTHON=path\to\python.exe
    exit /b 2
  )
  echo Creating %VENV% with !PYTHON! ...
  !PYTHON! -m venv %VENV% || exit /b 2
)
set VPY=%VENV%\Scripts\python.exe

call :install_if_changed requirements.txt || exit /b 2
if "%MODE%"=="test" (
  call :install_if_changed requirements-test.txt || exit /b 2
  "%VPY%" -m pytest !ARGS!
  exit /b !errorlevel!
)
"%VPY%" gui.py !ARGS!
exit /b !errorlevel!

rem Install a requirements file only when it (or the torch source) changed since the last install.
:install_if_changed
set FILE=%~1
set STAMP=%VENV%\.installed-%FILE%
set WANT=%VENV%\.want-%FILE%
copy /y "%FILE%" "%WANT%" >nul
echo torch=%TORCH_VERSION% index=%TORCH_INDEX_URL%>>"%WANT%"
if exist "%STAMP%" (
  fc /b "%STAMP%" "%WANT%" >nul && exit /b 0
)
echo Installing %FILE% into %VENV% (first run or requirements changed) ...
rem torch first and pinned, so nothing later can swap in another, multi-GB, build.
if "%FILE%"=="requirements.txt" (
  if "%TORCH_INDEX_URL%"=="" (
    "%VPY%" -m pip install --disable-pip-version-check torch==%TORCH_VERSION% || exit /b 2
  ) else (
    "%VPY%" -m pip install --disable-pip-version-check torch==%TORCH_VERSION% --index-url %TORCH_INDEX_URL% || exit /b 2
  )
)
"%VPY%" -m pip install --disable-pip-version-check -r "%FILE%" torch==%TORCH_VERSION% || exit /b 2
move /y "%WANT%" "%STAMP%" >nul
exit /b 0
