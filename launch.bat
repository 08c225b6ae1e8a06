@echo off
rem LORAID Studio launcher (Windows), kept in step with launch.sh.
rem   launch.bat [app flags]         set up .venv on first run, then start the app (flags go to app.py)
rem   launch.bat test [pytest args]  also install the test needs, then run the test suite
rem                                  (the browser tests need LORAID_CHROMIUM = path to chrome.exe or chromium)
rem A second start is fast: requirements are installed again only when requirements*.txt changed.
setlocal EnableExtensions DisableDelayedExpansion
cd /d "%~dp0"
set "ROOT=%~dp0"
set "VENV=%ROOT%.venv"
set "VENV_PY=%VENV%\Scripts\python.exe"

if exist "%VENV_PY%" goto venv_ready
call :find_python || exit /b 1
echo Creating the virtual environment in .venv with %PYTHON% ...
%PYTHON% -m venv "%VENV%"
if errorlevel 1 (
    echo error: could not create .venv with %PYTHON%; reinstall Python 3.10+ from python.org with the "py launcher" option. 1>&2
    exit /b 1
)
:venv_ready

call :install_requirements requirements.txt || exit /b 1

if /i not "%~1"=="test" goto run_app
call :install_requirements requirements-test.txt || exit /b 1
if not defined LORAID_CHROMIUM (
    echo error: the browser tests need Chromium or Chrome; set LORAID_CHROMIUM to its path, e.g. set "LORAID_CHROMIUM=C:\Program Files\Google\Chrome\Application\chrome.exe" 1>&2
    exit /b 1
)
if not exist "%LORAID_CHROMIUM%" (
    echo error: LORAID_CHROMIUM points at "%LORAID_CHROMIUM%", which does not exist; fix the path. 1>&2
    exit /b 1
)
rem Everything after the word "test" goes to pytest.
set "PYTEST_ARGS="
shift
:collect_args
if "%~1"=="" goto run_tests
set PYTEST_ARGS=%PYTEST_ARGS% %1
shift
goto collect_args
:run_tests
"%VENV_PY%" -m pytest %PYTEST_ARGS%
exit /b %errorlevel%

:run_app
"%VENV_PY%" "%ROOT%app.py" %*
exit /b %errorlevel%


:find_python
rem Sets PYTHON to a Python 3.10+ command: the py launcher first, then python on PATH.
set "PYTHON="
py -3 -c "import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)" >nul 2>&1
if not errorlevel 1 (
    set "PYTHON=py -3"
    exit /b 0
)
python -c "import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)" >nul 2>&1
if not errorlevel 1 (
    set "PYTHON=python"
    exit /b 0
)
echo error: LORAID Studio needs Python 3.10 or newer; install it from python.org (tick "py launcher") and run launch.bat again. 1>&2
exit /b 1


:install_requirements
rem Installs %1 into .venv unless the SHA-256 (certutil) stored in .venv says it is already installed.
set "REQ_FILE=%~1"
set "STAMP=%VENV%\.%~nx1.sha256"
set "WANTED="
set "HAVE="
for /f "skip=1 delims=" %%H in ('certutil -hashfile "%REQ_FILE%" SHA256') do if not defined WANTED set "WANTED=%%H"
if not defined WANTED (
    echo error: could not read %REQ_FILE%; run launch.bat from the LORAID Studio folder. 1>&2
    exit /b 1
)
if exist "%STAMP%" set /p HAVE=<"%STAMP%"
if "%HAVE%"=="%WANTED%" exit /b 0
echo Installing %REQ_FILE% into .venv (first run or changed requirements; this can take several minutes) ...
"%VENV_PY%" -m pip install --disable-pip-version-check -r "%REQ_FILE%"
if errorlevel 1 (
    echo error: installing %REQ_FILE% failed ^(see pip's message above^); check the network connection and run launch.bat again. 1>&2
    exit /b 1
)
> "%STAMP%" echo %WANTED%
exit /b 0
